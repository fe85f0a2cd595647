"""Packaging: every top-level room (core/, serve/, rag/, ...) installs as ``loradock.<room>``.

The package list is derived from the folders that hold an ``__init__.py`` (no hand-kept list); the
folders stay at the top of the repository, where people look for them. Metadata lives in pyproject.toml.
"""

from setuptools import find_packages, setup

NOT_ROOMS = ("tests", "tests.*", "loradock", "loradock.*")
found = find_packages(exclude=NOT_ROOMS)
rooms = [p for p in found if "." not in p]

setup(
    packages=["loradock", *(f"loradock.{p}" for p in found)],
    package_dir={"loradock": "loradock", **{f"loradock.{room}": room for room in rooms}},
)
