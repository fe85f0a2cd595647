"""CLI for training, data and eval (filled in by the training work)."""

import typer

train_app = typer.Typer(help="Train SFT/DPO LoRA adapters with TRL + PEFT.", no_args_is_help=True)
data_app = typer.Typer(help="Check and export training data.", no_args_is_help=True)


def eval_cmd() -> None:
    """Compare base, prompted base, RAG and an adapter on held-out prompts."""
    raise NotImplementedError
