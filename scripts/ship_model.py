"""Pack a trained translation model as the float16 .tz shipped in the package.

    tinyzip train --task bible-es --steps 10000 --out runs/bible.npz   # ~2 h on 2 cores (README)
    python scripts/ship_model.py runs/bible.npz tinyzip/models/bible_en_es.tz

Every tensor is stored as float16 (half the bytes of float32; BLEU is checked against the float32
file by `tinyzip eval` on both, see README). The training record of the model file (task, steps,
validation history) is kept in the .tz's extra metadata.
"""
import sys

import tinyzip  # noqa: F401  (sets the thread environment before NumPy loads)
from tinyzip import container, io
from tinyzip.compressed import pack_float


def main(src: str, dst: str) -> None:
    params, config, extra = io.load_model(src)
    packed = {name: pack_float(W, "float16") for name, W in params.items()}
    note = {k: extra[k] for k in ("task", "steps", "history") if k in extra}
    container.save_tz(dst, packed, config, dict(note, tokenizer=extra["tokenizer"], method="float16",
                                                source=f"{src} (float32, trained by tinyzip train)"))
    print(f"wrote {dst}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/ship_model.py MODEL.npz OUT.tz")
    main(sys.argv[1], sys.argv[2])
