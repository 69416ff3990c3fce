"""File helpers shared by the analysis writers."""
import os


def make_parent_dir(path: str) -> None:
    """Create the folder that will hold ``path`` (and its parents) if it does not exist."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
