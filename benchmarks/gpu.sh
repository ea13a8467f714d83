#!/usr/bin/env bash
# The GPU checks (docs/gpu.md), as one script, so that a short lease of a GPU machine is one
# call. Run from the repository root on a machine with one CUDA GPU:
#
#   CLUSTERSSL_DATA_MIRROR=/path/with/fashion_mnist bash benchmarks/gpu.sh [OUT_DIR [PART...]]
#
# PARTs (default: all four, in this order): peers, tests, throughput, fmnist.
# 0. benchmarks/peers.py on the GPU: clusterssl's SimCLR against lightly's documented pipeline
#    (ResNet-18, CIFAR stem, 32 px, batch 512, paper-cifar10's recipe), steps and one whole epoch
#    each over 50,000 synthetic CIFAR-shaped images, with deterministic and then autotuned kernels;
# 1. tests/test_{train,methods,losses,augment,metrics}.py on the GPU (their runs use
#    `pretrain.device: auto`, which picks CUDA, so bf16 autocast, channels_last, torch.compile,
#    resume and preemption run there);
# 2. SimCLR, ResNet-18 with the CIFAR stem, 32 px, batch 512 (paper-cifar10's recipe): images/s
#    eager and with torch.compile (benchmarks/train_step.py); after part 3, the same at each paper
#    preset's own settings (CIFAR 32 px, STL-10 96 px, ImageNet-100 224 px), for their hours;
# 3. fmnist-gpu for CARL and SimCLR, seed 0, both at once on the one GPU: pretrain, embed, then
#    linear, k-NN and k-means on the test set. The preset trains 200 epochs;
#    FMNIST_GPU_EPOCHS=N trains N instead (warm-up scaled alike), and FMNIST_GPU_MINUTES=M picks
#    N from a measured first epoch of both so that pretraining fits M minutes. The epochs run are
#    in the summary: a shortened run is not the preset's number.
#
# Each part runs under its own time limit, and one that fails does not stop the next; the exit
# status is non-zero if any failed. Logs and a summary go to OUT_DIR (default results/gpu).
set -u -o pipefail
out=${1:-results/gpu}
parts=" ${*:2} "
[ "$parts" = "  " ] && parts=" peers tests throughput fmnist "
want() { [[ $parts == *" $1 "* ]]; }
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failed=()
part() {  # part NAME SECONDS LOG COMMAND...: one check, its output to the screen and to LOG
    local name=$1 limit=$2 log=$3
    shift 3
    echo "=== $name ($(date -u +%T), limit ${limit}s)" | tee -a "$log"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
    [ "$rc" = 0 ] || failed+=("$name")
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
    nproc
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

for kernels in deterministic autotuned; do  # needs the bench extra (lightly)
    want peers && part "peers: SimCLR ResNet-18 CIFAR stem, batch 512, $kernels kernels" 240 "$out/peers.log" \
        python3 benchmarks/peers.py --device cuda --params config/presets/paper-cifar10.yaml --batch 512 --workers 8 \
        --kernels "$kernels" --steps 20 --turns 3 --epochs 1 < /dev/null
done

xdist=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")  # pytest-xdist, where installed: eight at a time
want tests && part "GPU tests" 300 "$out/tests.log" python3 -m pytest -v --tb=short -p no:cacheprovider $xdist tests/test_{train,methods,losses,augment,metrics}.py

bench="$out/throughput.log"
want throughput && part "SimCLR ResNet-18 CIFAR stem, batch 512" 240 "$bench" \
    python3 benchmarks/train_step.py --params config/presets/paper-cifar10.yaml --methods simclr --batch 512 --shape 32 32 3 --steps 20 --rounds 5 < /dev/null

# fmnist-gpu, shortened only where asked; results outside OUT_DIR, the summary in it
run=${FMNIST_GPU_DIR:-/tmp/fmnist-gpu}
log="$out/fmnist-gpu.log"
mkdir -p "$run"
params_for() {  # params_for EPOCHS FILE: the preset with CARL and SimCLR, seed 0, EPOCHS epochs
    python3 - "$1" "$2" "$run" <<'EOF'
import sys, yaml
epochs, path, run = int(sys.argv[1]), sys.argv[2], sys.argv[3]
p = yaml.safe_load(open("config/presets/fmnist-gpu.yaml"))
full = p["pretrain"]["epochs"]
p.update(methods=["carl", "simclr"], seeds=[0], paths={"data": f"{run}/data", "results": f"{run}/results"})
p["pretrain"].update(epochs=epochs, warmup_epochs=max(1, round(p["pretrain"]["warmup_epochs"] * epochs / full)),
                     checkpoint_every=min(p["pretrain"]["checkpoint_every"], epochs))
yaml.safe_dump(p, open(path, "w"), sort_keys=False)
EOF
}
both() {  # both PARAMS: pretrain CARL and SimCLR at once; fails if either does
    clusterssl --params "$1" pretrain --method carl --seed 0 --no-progress & local a=$!
    clusterssl --params "$1" pretrain --method simclr --seed 0 --no-progress & local b=$!
    wait $a && wait $b
}
export -f both  # `part` runs it under timeout, through bash -c
full=$(python3 -c "import yaml; print(yaml.safe_load(open('config/presets/fmnist-gpu.yaml'))['pretrain']['epochs'])")
epochs=${FMNIST_GPU_EPOCHS:-$full}
want fmnist || epochs=""
if [ -n "$epochs" ]; then
    params_for 1 "$run/probe.yaml"  # one epoch; its data paths are the run's
    [ -d "$run/data/prepared" ] || part "fmnist-gpu data" 120 "$log" bash -c "clusterssl --params $run/probe.yaml data fetch && clusterssl --params $run/probe.yaml data prepare"
fi
if [ -n "$epochs" ] && [ -n "${FMNIST_GPU_MINUTES:-}" ]; then
    part "fmnist-gpu: one epoch of both, to size the run" 180 "$log" bash -c "both $run/probe.yaml"
    epochs=$(python3 - "$run/results" "$FMNIST_GPU_MINUTES" "$full" <<'EOF'
import csv, glob, sys
# the slower method's first epoch (training steps, cuDNN's autotuning included), +10 % for the
# per-epoch k-NN monitor and start-up
sec = max(float(next(csv.DictReader(open(f)))["seconds"]) for f in glob.glob(f"{sys.argv[1]}/runs/*/*/seed0/history.csv"))
print(max(1, min(int(sys.argv[3]), int(float(sys.argv[2]) * 60 / (sec * 1.1)))))
EOF
    ) || epochs=""
    rm -rf "$run/results"
    echo "fmnist-gpu: $epochs epochs fit ${FMNIST_GPU_MINUTES} min" | tee -a "$log"
fi
if [ -n "$epochs" ]; then
    params_for "$epochs" "$run/params.yaml"
    p="$run/params.yaml"
    part "fmnist-gpu: pretrain CARL and SimCLR, $epochs epochs" "${FMNIST_GPU_TIMEOUT:-86400}" "$log" bash -c "both $p"
    evaluate() {  # evaluate PARAMS METHOD: embed, then linear, k-NN and k-means on the test set
        # few threads each, as the workflow's rules give them: the probe's small steps on every
        # core in two processes at once ran for minutes instead of seconds
        clusterssl --params "$1" embed --method "$2" --seed 0 --threads 4 || return
        for e in linear knn cluster; do clusterssl --params "$1" eval $e --method "$2" --seed 0 --threads 4 || return; done
    }
    export -f evaluate
    part "fmnist-gpu: evaluate both" 300 "$log" bash -c "evaluate $p carl & a=\$!; evaluate $p simclr && wait \$a"
    python3 - "$run/results" "$epochs" <<'EOF' 2>&1 | tee "$out/fmnist-gpu-summary.txt"
import csv, glob, json, sys
res, epochs = sys.argv[1], sys.argv[2]
for m in ["carl", "simclr"]:
    hist = list(csv.DictReader(open(f"{res}/runs/fashion_mnist/{m}/seed0/history.csv")))
    mets = {}
    def flat(prefix, v):  # test-set scores only
        if isinstance(v, dict):
            for k, w in v.items():
                flat(f"{prefix}.{k}", w)
        elif isinstance(v, float) and not any(s in prefix for s in ("val_top1", "train_top1", ".lr")):
            mets[prefix] = round(v, 4)
    for f in sorted(glob.glob(f"{res}/metrics/fashion_mnist/{m}/seed0/*.json")):
        flat(f.rsplit("/", 1)[1][:-5], json.load(open(f))["metrics"])
    ips = [float(h["images_per_s"]) for h in hist]
    print(json.dumps({"method": m, "epochs": int(epochs), "pretrain_seconds": round(sum(float(h["seconds"]) for h in hist), 1),
                      "images_per_s_median": sorted(ips)[len(ips) // 2], "last_loss": float(hist[-1]["loss"]),
                      "online_knn20_last": float(hist[-1]["online_knn20_top1"]), **mets}))
EOF
    for m in carl simclr; do cp "$run/results/runs/fashion_mnist/$m/seed0/history.csv" "$out/$m-history.csv"; done
fi

# each paper preset's own step (imagenet100: one of its two processes' share of the batch), for
# its hours: epochs x train images / images/s
while read -r preset side batch; do
    want throughput && part "SimCLR at $preset's settings, batch $batch" 180 "$bench" \
        python3 benchmarks/train_step.py --params "config/presets/$preset.yaml" --methods simclr --batch "$batch" --shape "$side" "$side" 3 --steps 20 --rounds 5 < /dev/null
done <<'EOF'
paper-cifar10 32 256
paper-stl10 96 256
paper-imagenet100 224 128
EOF

echo "failed: ${failed[*]:-none}"
[ ${#failed[@]} = 0 ]
