"""The README grid: 16 prompts through `paella generate` with the built-in default model (no
--models), seed 0, its native 32 px size, shown 4x enlarged with their prompts.

Usage: grid.py PAELLA_BINARY OUT.png
"""
import os
import subprocess
import sys
import tempfile

from PIL import Image, ImageDraw

PROMPTS = ["a red fox", "red apple", "slice of pizza", "rocket", "grinning face", "ghost", "snowman", "banana",
           "christmas tree", "octopus", "rainbow", "dog face", "sunflower", "pile of poo", "thumbs up sign",
           "grinning cat face with smiling eyes"]
SCALE, CAPTION_H = 4, 14


def main():
    paella, out = sys.argv[1:3]
    env = {k: v for k, v in os.environ.items() if k != "PAELLA_MODELS"}
    cell = 32 * SCALE
    grid = Image.new("RGB", (4 * cell, 4 * (cell + CAPTION_H)), "white")
    draw = ImageDraw.Draw(grid)
    with tempfile.TemporaryDirectory() as d:
        for i, prompt in enumerate(PROMPTS):
            path = os.path.join(d, f"{i}.png")
            subprocess.run([paella, "generate", prompt, "--seed", "0", "-q", "-o", path], check=True, env=env)
            img = Image.open(path).convert("RGB").resize((cell, cell), Image.NEAREST)
            x, y = (i % 4) * cell, (i // 4) * (cell + CAPTION_H)
            grid.paste(img, (x, y))
            label = prompt if len(prompt) <= 21 else prompt[:19] + "..."
            draw.text((x + 2, y + cell + 1), label, fill="black")
    grid.save(out)
    print(f"{len(PROMPTS)} prompts -> {out}")


if __name__ == "__main__":
    main()
