#!/usr/bin/env bash
# Re-run every experiment of docs/results.md, in priority order; export each into experiments/results/ (the
# committed tables: experiments/export_results.py), then regenerate the page from them (make_results.py).
#   experiments/run_all.sh                 # everything
#   experiments/run_all.sh main noise      # only these (names: main sign-grad noise noise-epochs imbalance ablation
#                                          # weight-sweep paper rank lr ood boolq nlg nlg-chain-sum nlg-chain-sum-lr
#                                          # nlg-chain-sum-long)
# Finished cells are skipped on a re-run (delete runs/<experiment> to start over). Runs at low priority.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ]; then . .venv/bin/activate; fi
NICE="nice -n 15"
# one intra-op thread: on a shared 2-core machine two torch threads fighting another job spin in the
# kernel (5-7 s per step instead of ~1 s); results do not depend on this beyond float summation order.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
ALL="main sign-grad imbalance noise noise-epochs weight-sweep ablation paper rank lr ood boolq nlg nlg-chain-sum nlg-chain-sum-lr nlg-chain-sum-long"
WANT="${*:-$ALL}"

output() {  # output CONFIG: the config's output folder
    python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['output'])" "$1"
}
export_runs() {  # export_runs CONFIG: its compare folder -> experiments/results/<folder name>*.csv
    python experiments/export_results.py "$(output "$1")"
}
run() {  # run NAME CONFIG
    case " $WANT " in *" $1 "*) ;; *) return 0 ;; esac
    echo "=== $1: balora compare --config $2 ($(date -u +%H:%M:%S))"
    $NICE balora compare --config "$2"
    export_runs "$2"
}
plot() {  # plot NAME ARGS...
    case " $WANT " in *" $1 "*) ;; *) return 0 ;; esac
    shift
    $NICE balora plot "$@"
}

run main experiments/main-tweets.yaml
run sign-grad experiments/sign-grad-tweets.yaml
run imbalance experiments/imbalance-tweets.yaml
plot imbalance tsne runs/imbalance-tweets/cells/lora-seed0 runs/imbalance-tweets/cells/pissa-seed0 \
    runs/imbalance-tweets/cells/ba-lora-seed0 --output runs/imbalance-tweets
case " $WANT " in *" imbalance "*) $NICE python experiments/export_tsne.py runs/imbalance-tweets ;; esac
run noise experiments/noise-tweets.yaml
run noise-epochs experiments/noise-epochs-tweets.yaml
# where the regularizers act: each term alone, and all three, at 1, 10 and 100 times the official weights
# (consistency also at 2, 3 and 5 times, svd at 30 times: their grids), then seeds 1-2 where a term acts most
extra_seeds() {  # extra_seeds CONFIG [GRID]: seeds 1 and 2 of that config's cell(s), then export again
    case " $WANT " in *" weight-sweep "*) ;; *) return 0 ;; esac
    $NICE balora compare --config "$1" ${2:+--grid "$2"} --seeds 1 2
    export_runs "$1"
}
for sweep in consistency diversity svd all-x10 all-x100; do run weight-sweep "experiments/weight-sweep-$sweep.yaml"; done
extra_seeds experiments/weight-sweep-consistency.yaml consistency_weight=0.25
extra_seeds experiments/weight-sweep-svd.yaml svd_weight=0.5
extra_seeds experiments/weight-sweep-all-x10.yaml
run ablation experiments/ablation-consistency-only.yaml
run ablation experiments/ablation-diversity-only.yaml
run ablation experiments/ablation-svd-only.yaml
for term in consistency diversity svd; do run ablation "experiments/ablation-no-$term.yaml"; done  # the pairs
run paper experiments/main-tweets-paper.yaml
run rank experiments/rank-tweets.yaml
run lr experiments/lr-tweets.yaml
case " $WANT " in *" lr "*)  # every method whose best validation learning rate is not 5e-4: 5 seeds there
    python experiments/make_results.py --best-lr lr-tuned --best-lr-seeds 5 | while read -r method rate; do
        $NICE balora compare --config experiments/lr-tweets.yaml --methods "$method" --grid "learning_rate=$rate" \
            --seeds 0 1 2 3 4
    done
    export_runs experiments/lr-tweets.yaml ;;
esac
case " $WANT " in *" ood "*) python experiments/make_ood_data.py ;; esac
run ood experiments/ood-tweets.yaml
# BoolQ probes on validation: can LoRA (two learning rates) or full fine-tuning learn more than the prior?
probe() {  # probe NAME METHOD LR
    case " $WANT " in *" boolq "*) ;; *) return 0 ;; esac
    [ -f "runs/boolq-probe/$1/metrics.json" ] && return 0
    $NICE balora train --model minilm --dataset boolq --method "$2" --output "runs/boolq-probe/$1" --overwrite \
        --train-size 3000 --eval-size 500 --max-length 128 --epochs 1 --batch-size 16 --learning-rate "$3" \
        --logging-steps 50 --seed 0
}
probe lora-lr5e-4 lora 5e-4
probe lora-lr2e-3 lora 2e-3
probe full-lr5e-5 full 5e-5
run boolq experiments/boolq.yaml
# NLG seed by seed (every method on seed 0 first), so a run stopped early still compares all methods
case " $WANT " in *" nlg "*)
    for seeds in "0" "0 1" "0 1 2"; do $NICE balora compare --config experiments/nlg-gsm.yaml --seeds $seeds; done
    export_runs experiments/nlg-gsm.yaml ;;
esac
case " $WANT " in *" nlg "*) [ -f runs/nlg-gsm/base.json ] || $NICE python experiments/nlg_base.py ;; esac
# NLG that separates (two-term arithmetic, chosen on validation): the same, plus its base-model row
case " $WANT " in *" nlg-chain-sum "*)
    for seeds in "0" "0 1" "0 1 2"; do
        $NICE balora compare --config experiments/nlg-chain-sum.yaml --seeds $seeds
    done
    export_runs experiments/nlg-chain-sum.yaml
    [ -f runs/nlg-chain-sum/base.json ] || $NICE python experiments/nlg_base.py experiments/nlg-chain-sum.yaml ;;
esac
# its learning-rate grid on validation (seed 0), then each method at its chosen rate with 3 seeds
case " $WANT " in *" nlg-chain-sum-lr "*)
    grid=experiments/nlg-chain-sum-lr.yaml
    $NICE balora compare --config "$grid"  # pissa, ba-lora below LoRA's rate
    $NICE balora compare --config "$grid" --methods lora dora dual-lora --grid learning_rate=5e-4,4e-3 --seeds 0
    export_runs "$grid"
    python experiments/make_results.py --best-lr nlg-chain-sum-tuned | while read -r method rate; do
        $NICE balora compare --config "$grid" --methods "$method" --grid "learning_rate=$rate" --seeds 0 1 2
    done
    export_runs "$grid" ;;
esac
# twice the training budget, each method at the rate the 60-step grid chose on validation (two rate groups:
# two compare folders, exported as one experiment)
case " $WANT " in *" nlg-chain-sum-long "*)
    long=experiments/nlg-chain-sum-long.yaml
    for seeds in "0" "0 1" "0 1 2" "0 1 2 3"; do
        $NICE balora compare --config "$long" --methods lora dora dual-lora --grid learning_rate=2e-3 --seeds $seeds
        $NICE balora compare --config "$long" --output runs/nlg-chain-sum-long-b --methods pissa ba-lora \
            --grid learning_rate=5e-4 --seeds $seeds
    done
    python experiments/export_results.py runs/nlg-chain-sum-long runs/nlg-chain-sum-long-b --name nlg-chain-sum-long ;;
esac

# every table, number and figure of docs/results.md, from experiments/results/ only; commit those files
python experiments/make_results.py
