#!/bin/bash
#SKYPORT --name=gpu --time=00:02:00
#SKYPORT --nodes=1 --cpus-per-node=1 --gpus-per-node=1
echo "node $SKYPORT_NODE_NAME gpus-per-node $SKYPORT_GPUS_PER_NODE CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader || true
fi
sleep "${HOLD_S:-0}"   # hold the GPU a while (the test runs two at once)
