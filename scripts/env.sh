# Sourced by the run and test scripts: nothing may wait on the network.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export HF_DATASETS_OFFLINE=1
export DVC_NO_ANALYTICS=1
export TOKENIZERS_PARALLELISM=false
export PATH="$(pwd)/.venv/bin:$PATH"
