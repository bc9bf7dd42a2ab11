"""The one thing pyproject.toml cannot say: the preset files live in presets/ at the top of the
repository (as the design card has it) and ship inside the wheel as engine/presets/, so that
`--preset NAME` works after `pip install .` or `pipx install` from any folder."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["engine*", "tui*"]), "engine.presets"],
      package_dir={"engine.presets": "presets"})
