"""Run the llama_fast benchmark CLI from a checkout: python run_llama.py --help"""
from llama_fast.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
