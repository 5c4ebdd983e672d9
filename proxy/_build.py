"""Build-time only (``[tool.setuptools.cmdclass]`` in pyproject.toml; nothing imports it at run time).

A wheel has no checkout around it, so the repository's default config and mappings are copied into
it as package data, ``proxy/_data/config/facade.yaml`` and ``proxy/_data/mappings/**``, where
``proxy.settings`` finds them when ``config/facade.yaml`` is not beside the package. The repository
keeps its layout (the copies exist only in the build directory), and an sdist carries the originals,
since it lists the source files of everything ``build_py`` copies.

Only these patterns ship: a key file or a local override that someone keeps in ``config/`` stays out.
"""

from __future__ import annotations

import glob
import os

from setuptools.command.build_py import build_py as _build_py

SHIPPED = ("config/facade.yaml", "mappings/**/*.yaml", "mappings/README.md")
TARGET = ("proxy", "_data")


class build_py(_build_py):  # (named as the command it replaces)
    def _get_data_files(self):  # type: ignore[no-untyped-def]
        return [*super()._get_data_files(), self._shipped()]

    def get_data_files_without_manifest(self):  # type: ignore[no-untyped-def]
        return [*super().get_data_files_without_manifest(), self._shipped()]

    def _shipped(self) -> tuple[str, str, str, list[str]]:
        """One build_py data entry: (package, source dir, build dir, files relative to the source dir)."""
        files = sorted(
            {f for pattern in SHIPPED for f in glob.glob(pattern, recursive=True) if os.path.isfile(f)}
        )
        return "proxy", os.curdir, os.path.join(self.build_lib, *TARGET), files
