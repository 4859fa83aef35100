"""Make Debian's PyTorch usable by torchrun: its TCPStore follows USE_LIBUV.

Debian builds PyTorch without libuv, yet ``TCPStore`` asks for libuv by default, and
torchrun's rendezvous (c10d, static, and the workers' agent store) never says
otherwise: every ``torchrun --rdzv-backend=c10d`` failed with "use_libuv was
requested but PyTorch was build without libuv support". This appends to
``torch/distributed/__init__.py`` a ``TCPStore`` whose ``use_libuv`` defaults to
``USE_LIBUV`` (unset: off), and rebinds the modules already holding the old one.
Idempotent; a no-op where torch has libuv. Run at image build (Dockerfile).
"""

import pathlib
import sys

import torch.distributed as dist

MARK = "# slurmkit: TCPStore follows USE_LIBUV"
PATCH = f'''

{MARK} (docker-slurm/torch-libuv.py)
if is_available() and "TCPStore" in globals():
    class TCPStore(TCPStore):  # type: ignore[no-redef]
        def __init__(self, *args, use_libuv=None, **kwargs):
            if use_libuv is None:
                use_libuv = __import__("os").environ.get("USE_LIBUV", "0") == "1"
            super().__init__(*args, use_libuv=use_libuv, **kwargs)

    for _module in list(__import__("sys").modules.values()):
        if getattr(_module, "__name__", "").startswith("torch.distributed") \\
                and getattr(_module, "TCPStore", None) is TCPStore.__mro__[1]:
            _module.TCPStore = TCPStore
'''


def main() -> int:
    path = pathlib.Path(dist.__file__)
    text = path.read_text()
    if MARK in text:
        return 0
    try:
        dist.TCPStore("127.0.0.1", 0, is_master=True, use_libuv=True)
        return 0  # built with libuv: nothing to do
    except RuntimeError as error:
        if "libuv" not in str(error):
            raise
    path.write_text(text + PATCH)
    print(f"patched {path}: TCPStore follows USE_LIBUV", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
