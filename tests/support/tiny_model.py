"""The tiny random model the tests serve and train: dr_train.tiny."""

from dr_train.tiny import CHAT_TEMPLATE, tiny_qwen2, train_tokenizer

__all__ = ["CHAT_TEMPLATE", "tiny_qwen2", "train_tokenizer"]
