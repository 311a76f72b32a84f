#!/usr/bin/env bash
# The main job: the whole pipeline on the embedded default, one `dr` command after another.
#
#   world → index → trajectories (oracle teacher) → sft data → SFT of SmolLM2-135M-Instruct → bench on the
#   held-out questions and report tasks → the trained checklist judge → GRPO → bench again → tables
#
#   bash scripts/main_job.sh                  # runs/main: the README's run and figures
#   bash scripts/main_job.sh --quick          # runs/quick: a tiny model from scratch, every stage in minutes
#   OUT=runs/qwen BASE_MODEL=./Qwen2.5-7B TEACHER=endpoint TEACHER_BASE_URL=http://host:8000/v1 \
#       TEACHER_MODEL=teacher PRECISION=bf16 bash scripts/main_job.sh      # a real model and teacher, a GPU
#
# Every setting of the job is a variable in "Settings" below, taken from the environment when set there
# (QUICK=1 is --quick, OUT=DIR is --out DIR). Every setting of a stage is a flag of its `dr` command.
# Re-running is safe: a data step is skipped when its output exists, and every training and bench command
# runs with --resume, which leaves a finished run alone, continues an interrupted one, and (the benches)
# sets aside a run made with other settings as OUT.stale-N. The tables go to stdout and OUT/*.md, their
# figures to OUT/*.json and OUT/*.jsonl; each command is printed to stderr as it runs.
set -euo pipefail
cd "$(dirname "$0")/.."

while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --out) OUT=${2:?--out needs a folder}; shift ;;
        -h | --help) sed -n '2,/^set -e/{/^set -e/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
        *) echo "main job: unknown argument $1 (the settings are variables: see the top of $0)" >&2; exit 2 ;;
    esac
    shift
done

# ---- Settings ------------------------------------------------------------------------------------------
QUICK=${QUICK:-0}
BASE_MODEL=${BASE_MODEL:-$([ "$QUICK" = 1 ] && echo scratch || echo smollm2-135m)}  # a folder, a name, scratch
SCRATCH=$([ "$BASE_MODEL" = scratch ] && echo 1 || echo 0)
# pick QUICK FROM-SCRATCH PRETRAINED: a setting's default for this kind of run
pick() { if [ "$QUICK" = 1 ]; then echo "$1"; elif [ "$SCRATCH" = 1 ]; then echo "$2"; else echo "$3"; fi; }
OUT=${OUT:-runs/$([ "$QUICK" = 1 ] && echo quick || echo main)}
SEED=${SEED:-0}
TINY=${TINY:-$(pick tiny:qwen2 tiny:qwen2-mini tiny:qwen2-mini)}  # the from-scratch shape
ENGINE=${ENGINE:-auto}  # where benches and RL generate: vllm, hf, or auto (vLLM where it can serve the model)
TEACHER=${TEACHER:-oracle}  # or endpoint, with TEACHER_BASE_URL and TEACHER_MODEL
TEACHER_BASE_URL=${TEACHER_BASE_URL:-}
TEACHER_MODEL=${TEACHER_MODEL:-}
# auto: bf16 on a GPU or a CPU with AMX; the from-scratch model stays in fp32, as its README figures were made
PRECISION=${PRECISION:-$([ "$SCRATCH" = 1 ] && echo fp32 || echo auto)}
ENTITIES=${ENTITIES:-$(pick 120 1200 1200)}
TASKS=${TASKS:-$(pick 150 4000 4000)}
# a pretrained model skips mid-training (0): it can already copy and read, and its SFT is what fits
MIDTRAIN_ENTITIES=${MIDTRAIN_ENTITIES:-$(pick 200 50000 50000)}
MIDTRAIN_EPOCHS=${MIDTRAIN_EPOCHS:-$([ "$SCRATCH" = 1 ] && pick 0.2 1 1 || echo 0)}
MIDTRAIN_LR=${MIDTRAIN_LR:-3e-3}
COPY_WARMUP=${COPY_WARMUP:-$(pick 0 4000 0)}  # copy drills before mid-training a model from scratch
SFT_EPOCHS=${SFT_EPOCHS:-$(pick 1 2 1)}
# above mid-training's last rate (3e-4) SFT first undoes what mid-training taught (docs/benchmarks.md)
SFT_LR=${SFT_LR:-$([ "$SCRATCH" = 1 ] && echo 3e-4 || echo 1e-4)}
SFT_STEPS=${SFT_STEPS:-$(pick "" "" 150)}  # optimizer steps of TOKENS_PER_STEP (empty: the epochs)
TOKENS_PER_STEP=${TOKENS_PER_STEP:-8192}
MAX_LEN=${MAX_LEN:-4096}
RL_STEPS=${RL_STEPS:-$(pick 1 3 4)}
RL_LR=${RL_LR:-2e-5}  # a higher rate moved the SmolLM2 policy far from its start in one update
RL_TASKS=${RL_TASKS:-$(pick 2 6 8)}  # tasks per RL step, each researched RL_GROUP times
RL_GROUP=${RL_GROUP:-$(pick 2 4 4)}
RL_TEMPERATURE=${RL_TEMPERATURE:-1.0}  # lower, the SFT model's rollouts of a task mostly agreed: no signal
ALGO=${ALGO:-grpo}
BENCH_TASKS=${BENCH_TASKS:-$(pick 4 100 200)}
CONCURRENCY=${CONCURRENCY:-}  # agent runs at once (empty: 16 on vLLM, 2 on transformers)
AGENT_STEPS=${AGENT_STEPS:-8}
AGENT_TOKENS=${AGENT_TOKENS:-$(pick 8000 20000 20000)}
# the report track: report tasks beside the questions in SFT, RL and the benches (0: none)
REPORT_TASKS=${REPORT_TASKS:-$(pick 24 640 640)}  # 640: 214 held out, for the 200 benched
REPORT_BENCH_TASKS=${REPORT_BENCH_TASKS:-$(pick 4 200 200)}
REPORT_AGENT_STEPS=${REPORT_AGENT_STEPS:-12}
REPORT_AGENT_TOKENS=${REPORT_AGENT_TOKENS:-$(pick 12000 30000 30000)}
# what rewards RL's report tasks: trained (a SmolLM2 judge, scripts/judge_job.py, served for the run) or
# rules (the world's true verdicts, the upper bound); a judge from scratch on little data would not write JSON
JUDGE=${JUDGE:-$(pick rules rules trained)}
JUDGE_EXAMPLES=${JUDGE_EXAMPLES:-280}
RULES_RL=${RULES_RL:-0}  # 1: with JUDGE=trained, also RL rewarded by the rules, same seeds, benched beside
# one agent for every stage (teacher, bench, RL): a model call writes at most this many tokens, and a
# search shows this many results
export DR_AGENT_MAX_OUTPUT_TOKENS=${DR_AGENT_MAX_OUTPUT_TOKENS:-384}
export DR_SEARCH_TOP_K=${DR_SEARCH_TOP_K:-3}
export TOKENIZERS_PARALLELISM=false

# ---- Helpers -------------------------------------------------------------------------------------------
bash scripts/setup.sh
DR_BIN=${DR_BIN:-.venv/bin/dr}
PYTHON_BIN=${PYTHON_BIN:-.venv/bin/python}
dr() {
    { printf '$ dr'; printf ' %q' "$@"; printf '\n'; } >&2
    "$DR_BIN" "$@"
}
once() {  # once OUTPUT ARGS...: `dr ARGS` unless OUTPUT is there (the data steps, which do not resume)
    local output=$1
    shift
    [ -e "$output" ] || dr "$@"
}
engine_of() {  # vllm or hf: ENGINE, or with auto what `dr serve` would start for the model
    if [ "$ENGINE" != auto ]; then echo "$ENGINE"; return; fi
    if "$DR_BIN" serve "$1" --dry-run 2>/dev/null | grep -q vllm.entrypoints; then echo vllm; else echo hf; fi
}
concurrency_of() {
    if [ -n "$CONCURRENCY" ]; then echo "$CONCURRENCY"; elif [ "$(engine_of "$1")" = vllm ]; then echo 16; else echo 2; fi
}
bench() {  # bench NAME MODEL [reports]: the model on the held-out questions (or report tasks), served for it
    local name=$1 model=$2 suite=$OUT/world/test.jsonl limit=$BENCH_TASKS steps=$AGENT_STEPS tokens=$AGENT_TOKENS
    if [ "${3:-}" = reports ]; then
        suite=$OUT/world/reports-test.jsonl limit=$REPORT_BENCH_TASKS steps=$REPORT_AGENT_STEPS tokens=$REPORT_AGENT_TOKENS
    fi
    # text tool calls: the server renders exactly the tokens the model trained on
    local serve_engine=transformers
    [ "$(engine_of "$model")" = vllm ] && serve_engine=vllm
    local flags=(--suite "$suite" -o "$OUT/bench/$name" --serve "$model" --serve-engine "$serve_engine"
        --index "$OUT/index" --no-web --concurrency "$(concurrency_of "$model")" --limit "$limit"
        --max-steps "$steps" --max-tokens "$tokens" --temperature 0 --tool-mode text
        --resume --on-change set-aside)
    # runs that failed (a server error, not a wrong answer: exit 3) are tried once more; what still fails
    # is left out of the tables, whose n column says how many were scored
    local rc=0
    dr bench run "${flags[@]}" >/dev/null || rc=$?
    if [ "$rc" = 3 ]; then
        rc=0
        dr bench run "${flags[@]}" >/dev/null || rc=$?
    fi
    if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then
        echo "main job: the bench of $name failed (exit $rc)" >&2
        exit "$rc"
    fi
    BENCHED=$OUT/bench/$name
}
SECONDS=0
mkdir -p "$OUT"
world=$OUT/world
models=$OUT/models

# ---- Data ----------------------------------------------------------------------------------------------
once "$world/test.jsonl" data world -o "$world" --seed "$SEED" --entities "$ENTITIES" --tasks "$TASKS" \
    --max-hops 2 --report-tasks "$REPORT_TASKS"
once "$OUT/index" data index "$world/corpus.jsonl" -i "$OUT/index"
# the training tasks the teacher researches: the questions, and the report tasks (the oracle writes a
# cited report from the articles it opened)
train_tasks=$world/train.jsonl
if [ "$REPORT_TASKS" != 0 ]; then
    train_tasks=$OUT/train-all.jsonl
    [ -e "$train_tasks" ] || { cat "$world/train.jsonl" "$world/reports-train.jsonl" >"$train_tasks.tmp" &&
        mv "$train_tasks.tmp" "$train_tasks"; }
fi
teacher=(--teacher "$TEACHER")
[ "$TEACHER" = endpoint ] && teacher+=(--base-url "$TEACHER_BASE_URL" --model "$TEACHER_MODEL" --samples 4)
# --resume: an interrupted teacher's finished tasks are kept (an endpoint teacher's are costly)
dr data trajectories "$train_tasks" --index "$OUT/index" "${teacher[@]}" -o "$OUT/trajectories.jsonl" --resume
# no --decontaminate against the test split: the world keeps test answers out of training by construction,
# and its questions share templates, which n-gram decontamination flags as leaks
once "$OUT/sft.jsonl" data sft "$OUT/trajectories.jsonl" -o "$OUT/sft.jsonl"

# ---- Training ------------------------------------------------------------------------------------------
# Mid-training text: the encyclopedia of another world (other names and facts, so nothing about the test
# questions is learnt by heart) plus the trajectories, every token learnt; a model from scratch learns its
# tokenizer from it too, and first does copy drills: searching and answering mean copying names and ids
midtrain=$([ "$MIDTRAIN_EPOCHS" != 0 ] && echo 1 || echo 0)
mid_world=$OUT/midtrain-world
if [ "$midtrain" = 1 ] || [ "$SCRATCH" = 1 ]; then
    once "$mid_world/corpus.jsonl" data world -o "$mid_world" --seed $((SEED + 1000)) \
        --entities "$MIDTRAIN_ENTITIES" --tasks 10
fi
base=$BASE_MODEL
if [ "$SCRATCH" = 1 ]; then
    # the untrained model: random weights and a tokenizer learnt from the training text, zero steps
    base=$models/base
    dr train midtrain "$mid_world/corpus.jsonl" "$OUT/sft.jsonl" --model "$TINY" -o "$base" --max-steps 0 \
        --seed "$SEED" --resume >&2
fi
start=$base
if [ "$midtrain" = 1 ]; then
    start=$models/mid
    dr train midtrain "$mid_world/corpus.jsonl" "$OUT/sft.jsonl" --model "$base" -o "$start" \
        --max-len "$MAX_LEN" --epochs "$MIDTRAIN_EPOCHS" --lr "$MIDTRAIN_LR" --warmup 50 --no-grad-ckpt \
        --save-every 500 --seed "$SEED" --resume --copy-warmup "$COPY_WARMUP" --precision "$PRECISION" >&2
fi
# from scratch: the tiny model's measured setting; a 135M model: checkpointing (3 GiB smaller, 15% slower:
# docs/benchmarks.md), and a fixed number of steps of TOKENS_PER_STEP tokens
shape=(--no-grad-ckpt --save-every 200)
if [ "$SCRATCH" = 0 ]; then
    shape=(--tokens-per-step "$TOKENS_PER_STEP" --save-every 50)
    [ -n "$SFT_STEPS" ] && shape+=(--max-steps "$SFT_STEPS")
fi
sft=$models/sft
dr train sft "$OUT/sft.jsonl" --model "$start" -o "$sft" --max-len "$MAX_LEN" --epochs "$SFT_EPOCHS" \
    --lr "$SFT_LR" --warmup 10 "${shape[@]}" --seed "$SEED" --resume --precision "$PRECISION" >&2

# ---- Benches before RL ---------------------------------------------------------------------------------
runs=()
bench untrained "$base" && runs+=("$BENCHED")
[ "$midtrain" = 1 ] && bench mid "$start" && runs+=("$BENCHED")
bench sft "$sft" && runs+=("$BENCHED")
report_runs=()
[ "$REPORT_TASKS" != 0 ] && bench reports-sft "$sft" reports && report_runs+=("$BENCHED")

# ---- RL ------------------------------------------------------------------------------------------------
# its tasks: the questions, and with the report track as many report tasks in turn (rewarded by the judge)
rl_tasks=$world/train.jsonl
reward=(--reward rules)
steps=$AGENT_STEPS tokens=$AGENT_TOKENS
if [ "$REPORT_TASKS" != 0 ]; then
    rl_tasks=$OUT/rl-tasks.jsonl
    if [ ! -e "$rl_tasks" ]; then
        questions=$(wc -l <"$world/train.jsonl") reports=$(wc -l <"$world/reports-train.jsonl")
        n=$((questions < reports ? questions : reports))
        paste -d '\n' <(head -n "$n" "$world/train.jsonl") <(head -n "$n" "$world/reports-train.jsonl") \
            >"$rl_tasks.tmp" && mv "$rl_tasks.tmp" "$rl_tasks"
    fi
    if [ "$JUDGE" = trained ]; then
        # the judge's data, SFT, and its agreement with the true verdicts of an unseen world's reports
        [ -e "$OUT/judge/results.md" ] || "$PYTHON_BIN" scripts/judge_job.py --out "$OUT/judge" \
            --examples "$JUDGE_EXAMPLES" --untrained-tasks 0 --engine "$ENGINE"
        reward=(--reward judge --judge-serve "$OUT/judge/models/judge")
    fi
    # a report run needs more model calls than a question's: RL's agent gets the report budget
    steps=$REPORT_AGENT_STEPS tokens=$REPORT_AGENT_TOKENS
fi
train_rl() {  # train_rl FOLDER REWARD...
    local folder=$1
    shift
    dr train rl "$rl_tasks" --model "$sft" --index "$OUT/index" "$@" -o "$folder" --algo "$ALGO" \
        --steps "$RL_STEPS" --tasks-per-step "$RL_TASKS" --group "$RL_GROUP" --lr "$RL_LR" \
        --temperature "$RL_TEMPERATURE" --max-steps "$steps" --max-tokens "$tokens" \
        --concurrency "$(concurrency_of "$sft")" --save-every 2 --seed "$SEED" --resume \
        --engine "$(engine_of "$sft")" >&2
}
curves=()
if [ "$RL_STEPS" != 0 ]; then
    train_rl "$models/rl" "${reward[@]}"
    curves+=("$models/rl")
    bench rl "$models/rl" && runs+=("$BENCHED")
    [ "$REPORT_TASKS" != 0 ] && bench reports-rl "$models/rl" reports && report_runs+=("$BENCHED")
    if [ "$REPORT_TASKS" != 0 ] && [ "$RULES_RL" = 1 ] && [ "$JUDGE" = trained ]; then
        # the upper bound beside it: the same seeds and steps, the report tasks rewarded by the rules
        train_rl "$models/rl-rules" --reward rules
        curves+=("$models/rl-rules")
        bench reports-rl-rules "$models/rl-rules" reports && report_runs+=("$BENCHED")
    fi
fi

# ---- Tables --------------------------------------------------------------------------------------------
# scores with 95% intervals: the questions' exact-answer accuracy, the reports' true checklist score
dr bench report "${runs[@]}" "${report_runs[@]}" --markdown "$OUT/results.md" >"$OUT/runs.jsonl"
tables=("$OUT/results.md")
# where along each question's chain of entities the runs stopped
dr bench hops "${runs[@]}" --suite "$world/test.jsonl" --markdown "$OUT/hops.md" >"$OUT/hops.jsonl"
# every two stages, question by question: the difference with a 95% paired bootstrap interval (an
# interval that excludes 0 is a real change)
dr bench compare "${runs[@]}" --markdown "$OUT/compare.md" >"$OUT/compare.json"
tables+=("$OUT/hops.md" "$OUT/compare.md")
if [ "${#report_runs[@]}" -gt 1 ]; then
    # the held-out report tasks, task by task: after SFT against after RL (the true checklist score)
    dr bench compare "${report_runs[@]}" --markdown "$OUT/compare-reports.md" >"$OUT/compare-reports.json"
    tables+=("$OUT/compare-reports.md")
fi
if [ "$REPORT_TASKS" != 0 ] && [ "${#curves[@]}" -gt 0 ]; then
    # the two rewards per RL step: what the policy trained on, and the rules' truth it never saw
    dr bench rewards "${curves[@]}" --markdown "$OUT/rewards.md" --plot "$OUT/rewards.png" >/dev/null
    tables+=("$OUT/rewards.md")
fi
if [ "$REPORT_TASKS" != 0 ] && [ "$RL_STEPS" != 0 ] && [ "$JUDGE" = trained ]; then
    # the trained judge against the rules on the policy's own held-out reports after RL, where reward
    # hacking would show
    last=${report_runs[${#report_runs[@]}-1]}
    judged=$OUT/judged-$(basename "$last").jsonl
    once "$judged" judge score "$last/trajectories.jsonl" --tasks "$world/reports-test.jsonl" --no-checks \
        --judge-serve "$OUT/judge/models/judge" --concurrency 16 --on-error skip -o "$judged"
    dr judge agree "$judged" "$last/judgments.jsonl" --pred-key target_id --label-key target_id \
        --tasks "$world/reports-test.jsonl" >"$OUT/judge-on-policy.json"
fi
first=1
for table in "${tables[@]}"; do
    [ "$first" = 1 ] || echo
    first=0
    cat "$table"
done
echo "main job: done in $((SECONDS / 60)) min; the tables in $OUT/*.md, their figures in $OUT/*.json*" >&2
