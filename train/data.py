"""Caption/image pairs for the default model, from the npm package emoji-datasource-twitter.

Twemoji graphics (c) Twitter, CC-BY 4.0; emoji-data (c) Cal Henderson, MIT (see NOTICE).
Every emoji with a Twitter image (skin-tone variants excluded) becomes one 32x32 RGB image
(alpha composited on white, box-downscaled from 64 px) and several captions: its name, its
short names, and the name with its category and subcategory words. CLIP ids come from the
C tokenizer (`paella tokenize --clip --lines`), so training sees exactly what the pipeline
feeds the text tower; ByT5 ids are the UTF-8 bytes + 3 and </s> = 1 (model/tok_byt5.c).

Usage: data.py NODE_MODULES_DIR PAELLA_BINARY OUT.npz
"""
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

NATIVE = 32


def clean(words):
    return " ".join(words.replace("_", " ").replace("-", " ").split()).lower()


def captions_of(e):
    name = clean(e["name"])
    caps = [name]
    for s in e["short_names"]:
        caps.append(clean(s))
    caps.append(name + " emoji")
    caps.append("a " + name)
    caps.append(name + ", " + clean(e["category"]))
    caps.append(name + ", " + clean(e["subcategory"]))
    out = []
    for c in caps:
        if c and c not in out:
            out.append(c)
    return out


def load_image(path):
    rgba = Image.open(path).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    return np.asarray(rgb.resize((NATIVE, NATIVE), Image.BOX), dtype=np.uint8)


def clip_ids(paella, texts):
    out = subprocess.run([paella, "tokenize", "--clip", "--lines", "-"], input="\n".join(texts).encode(),
                         capture_output=True, check=True).stdout.decode().splitlines()
    assert len(out) == len(texts), (len(out), len(texts))
    return np.array([[int(v) for v in line.split()] for line in out], dtype=np.int32)


def main():
    node_modules, paella, out_path = sys.argv[1:4]
    pkg = os.path.join(node_modules, "emoji-datasource-twitter")
    emoji = json.load(open(os.path.join(pkg, "emoji.json"), encoding="utf-8"))
    emoji = [e for e in emoji if e.get("has_img_twitter")]
    emoji.sort(key=lambda e: e["sort_order"])
    images, names, cap_text, cap_image = [], [], [], []
    for i, e in enumerate(emoji):
        images.append(load_image(os.path.join(pkg, "img", "twitter", "64", e["image"])))
        names.append(clean(e["name"]))
        for c in captions_of(e):
            cap_text.append(c)
            cap_image.append(i)
    ids = clip_ids(paella, cap_text)
    np.savez_compressed(out_path, images=np.stack(images), names=np.array(names), captions=np.array(cap_text),
                        caption_image=np.array(cap_image, dtype=np.int32), clip_ids=ids)
    print(f"{len(images)} images, {len(cap_text)} captions -> {out_path}")


if __name__ == "__main__":
    main()
