"""CLI for the Gradio UI."""


def ui_cmd() -> None:
    """Run the Gradio UI."""
    raise NotImplementedError
