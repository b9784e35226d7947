"""Checks that the C networks compute what the PyTorch training modules compute on the
exported weights: for each network, random inputs through `paella eval` and through nets.py,
max-norm relative error printed and required below 1e-3.

Usage: parity.py WEIGHTS_DIR PAELLA_BINARY
"""
import os
import subprocess
import sys
import tempfile

import torch

import nets
import train

def load(model, sd):
    own = model.state_dict()
    model.load_state_dict({k: sd[k].to(own[k].dtype) for k in own})
    return model.eval()


def c_eval(paella, net, weights, inputs, config):
    with tempfile.TemporaryDirectory() as d:
        fin, fout = os.path.join(d, "in.safetensors"), os.path.join(d, "out.safetensors")
        train.write_safetensors(fin, {**weights, **inputs}, config, f16=False)
        subprocess.run([paella, "eval", net, "--in", fin, "--out", fout], check=True)
        return train.read_safetensors(fout)[0]


def err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def main():
    wdir, paella = sys.argv[1:3]
    torch.manual_seed(0)
    worst = 0.0
    with torch.no_grad():
        sd, cfg = train.read_safetensors(os.path.join(wdir, "default_paella.safetensors"))
        m = load(nets.Paella(**cfg), sd)
        B, L = 2, 7
        x = torch.randint(0, cfg["num_labels"], (B, 8, 8))
        r = torch.tensor([1.0, 0.37])
        byt5, clip, ci = torch.randn(B, L, cfg["byt5_embd"]), torch.randn(B, cfg["clip_embd"]), torch.randn(B, cfg[
            "clip_embd"])
        ce, cp = m.cond_embed(byt5, torch.zeros(B, L, dtype=torch.bool), clip, ci, torch.zeros(B, dtype=torch.bool))
        ref = m(x, r, ce, cp)
        out = c_eval(paella, "paella", sd, {"in.x": x, "in.r": r, "in.byt5": byt5, "in.clip": clip,
                                            "in.clip_image": ci}, cfg)
        e = err(out["out.logits"], ref)
        print(f"paella logits: {e:.2e}")
        worst = max(worst, e)

        sd, cfg = train.read_safetensors(os.path.join(wdir, "default_t5.safetensors"))
        m = load(nets.T5Encoder(cfg["vocab_size"], cfg["d_model"], cfg["d_kv"], cfg["d_ff"], cfg["num_layers"],
                                cfg["num_heads"]), sd)
        ids, pad = train.byt5_ids(["grinning cat face with smiling eyes and a long tail of text", "fox"])
        out = c_eval(paella, "t5", sd, {"in.input_ids": ids[1:, :4]}, cfg)
        e1 = err(out["out.last_hidden_state"], m(ids[1:, :4], pad[1:, :4]))
        out = c_eval(paella, "t5", sd, {"in.input_ids": ids[:1]}, cfg)
        e2 = err(out["out.last_hidden_state"], m(ids[:1], pad[:1]))
        full = m(ids, pad)  # padded batch: the short row must equal its unpadded encoding
        e3 = err(full[1:, :4], m(ids[1:, :4], pad[1:, :4]))
        print(f"t5 hidden: {e1:.2e} {e2:.2e}; padded vs unpadded {e3:.2e}")
        worst = max(worst, e1, e2, e3)

        sd, cfg = train.read_safetensors(os.path.join(wdir, "default_clip.safetensors"))
        tc, vc = cfg["text_config"], cfg["vision_config"]
        text = load(nets.ClipText(tc["vocab_size"], tc["max_position_embeddings"], tc["hidden_size"],
                                  tc["intermediate_size"], tc["num_hidden_layers"], tc["num_attention_heads"],
                                  cfg["projection_dim"]), sd)
        ids = torch.zeros(2, 77, dtype=torch.long)
        ids[0, :5] = torch.tensor([49406, 3240, 1710, 320, 49407])
        ids[1, :2] = torch.tensor([49406, 49407])
        out = c_eval(paella, "clip-text", sd, {"in.input_ids": ids}, cfg)
        e = err(out["out.text_embeds"], text(ids))
        e2 = err(text(train.clip_batch_ids(ids)), text(ids))
        print(f"clip text: {e:.2e}; cut vs 77 {e2:.2e}")
        worst = max(worst, e, e2)
        vision = load(nets.ClipVision(vc["image_size"], vc["patch_size"], vc["hidden_size"], vc["intermediate_size"],
                                      vc["num_hidden_layers"], vc["num_attention_heads"], cfg["projection_dim"]), sd)
        px = torch.randn(2, 3, vc["image_size"], vc["image_size"])
        out = c_eval(paella, "clip-vision", sd, {"in.pixel_values": px}, cfg)
        e = err(out["out.image_embeds"], vision(px))
        print(f"clip vision: {e:.2e}")
        worst = max(worst, e)

        sd, cfg = train.read_safetensors(os.path.join(wdir, "default_prior.safetensors"))
        m = load(nets.Prior(**cfg), sd)
        x, c, r = torch.randn(2, cfg["clip_r"]), torch.randn(2, cfg["clip_r"]), torch.tensor([0.9, 0.2])
        out = c_eval(paella, "prior", sd, {"in.x": x, "in.c": c, "in.r": r}, cfg)
        e = err(out["out.pred"], m(x, r, c))
        print(f"prior: {e:.2e}")
        worst = max(worst, e)

        sd, cfg = train.read_safetensors(os.path.join(wdir, "default_vqgan.safetensors"))
        m = load(nets.VQModel(**cfg), sd)
        img = torch.rand(2, 3, 32, 32)
        out = c_eval(paella, "vqgan", sd, {"in.image": img}, cfg)
        idx, q = m.quantize(m.encode_latent(img))
        same = (out["out.indices"] == idx).float().mean().item()
        e = err(out["out.decoded"], m.decode(q))
        print(f"vqgan: indices equal {same:.3f}, decoded {e:.2e}")
        worst = max(worst, e, 1 - same)
    print(f"worst {worst:.2e}")
    if worst > 1e-3:
        sys.exit("parity FAILED")


if __name__ == "__main__":
    main()
