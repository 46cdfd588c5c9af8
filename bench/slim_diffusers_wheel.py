"""Slim a diffusers wheel for the GPU machine (the tree plus carried wheels must stay under 64 MiB):
keep the pipelines we run (wan, cogvideox, hunyuan_video), drop every other ``diffusers/pipelines/*``
and every ``diffusers/modular_pipelines/*`` folder, rewrite RECORD.

    python bench/slim_diffusers_wheel.py .whl/diffusers-0.42.1-py3-none-any.whl   # in place
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

KEEP = {"wan", "cogvideox", "hunyuan_video"}


def dropped(name: str) -> bool:
    parts = name.split("/")
    if len(parts) > 3 and parts[0] == "diffusers" and parts[1] == "pipelines":
        return parts[2] not in KEEP
    return len(parts) > 3 and parts[0] == "diffusers" and parts[1] == "modular_pipelines"


def main(path: str) -> int:
    src = Path(path)
    with zipfile.ZipFile(src) as zin:
        items = [(i, zin.read(i.filename)) for i in zin.infolist() if not dropped(i.filename) and not i.is_dir()]
    record = next(i.filename for i, _ in items if i.filename.endswith(".dist-info/RECORD"))
    lines = []
    for info, data in items:
        if info.filename == record:
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{info.filename},sha256={digest},{len(data)}")
    lines.append(f"{record},,")
    tmp = src.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info, data in items:
            zout.writestr(info.filename, "\n".join(lines) + "\n" if info.filename == record else data)
    tmp.replace(src)
    print(f"{src}: {src.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
