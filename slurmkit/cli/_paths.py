"""``PathArg``: click.Path that refuses a NUL byte as a usage error (click.Path calls
``os.stat``, which raises ValueError on one: a traceback, in click 8.x). Shared by every
command; kept out of the heavier option modules so ``slurmkit --help`` stays light."""

from __future__ import annotations

import click


class PathArg(click.Path):
    def convert(self, value, param, ctx):
        if isinstance(value, str) and "\0" in value:
            self.fail(f"{value!r}: a path cannot contain a NUL byte", param, ctx)
        return super().convert(value, param, ctx)
