"""python -m llama_fast.cli: the same as the llama-fast console script."""
from . import main

if __name__ == "__main__":
    raise SystemExit(main())
