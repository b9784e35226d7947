"""Trains the default model (VQGAN f4, CLIP towers, prior, ByT5-style encoder + Paella) on the
emoji data of data.py, each stage within a wall-clock budget, on one CPU thread, with fixed
seeds. Writes the five safetensors files the C pipeline embeds (model/data/default_*), the
retrieval set of the quality test, a loss log and a loss plot.

Usage: train.py DATA.npz OUT_DIR MINUTES_VQGAN MINUTES_CLIP MINUTES_PRIOR MINUTES_PAELLA
       train.py DATA.npz OUT_DIR --resume-paella MINUTES   (continue the Paella stage in OUT_DIR)
       train.py DATA.npz OUT_DIR --refit-text MINUTES_CLIP MINUTES_PRIOR MINUTES_PAELLA
           (train the CLIP towers and the prior again from scratch, longer, then continue Paella
           and its byte encoder in OUT_DIR on the new CLIP embeddings; the VQGAN is kept)
"""
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import nets

torch.set_num_threads(1)

# The one definition of the default model's sizes; the C side reads them from each file's
# __metadata__["config"].
VQGAN = dict(levels=2, bottleneck_blocks=2, c_hidden=64, c_latent=4, codebook_size=512, scale_factor=0.3764)
CLIP_PROJ = 64
CLIP_TEXT = dict(vocab_size=49408, max_position_embeddings=77, hidden_size=64, intermediate_size=256,
                 num_hidden_layers=3, num_attention_heads=4, hidden_act="gelu", layer_norm_eps=1e-5)
CLIP_VISION = dict(image_size=32, patch_size=8, num_channels=3, hidden_size=128, intermediate_size=512,
                   num_hidden_layers=3, num_attention_heads=4, hidden_act="gelu", layer_norm_eps=1e-5)
PRIOR = dict(clip_r=CLIP_PROJ, c_hidden=128, c_r=64, num_blocks=4)
T5 = dict(vocab_size=384, d_model=64, d_kv=16, d_ff=192, num_layers=3, num_heads=4,
          relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
          layer_norm_epsilon=1e-6)
PAELLA = dict(c_in=32, c_out=32, num_labels=VQGAN["codebook_size"], c_r=64, patch_size=2, c_cond=128,
              c_hidden=[128, 256], nhead=[4, 8], blocks=[2, 3], level_config=["CTA", "CTA"], clip_embd=CLIP_PROJ,
              byt5_embd=T5["d_model"], clip_seq_len=4, kernel_size=3, dropout=0, self_attn=True)

LOG = []
T0 = time.time()
EARLIER_WALL = 0.0  # a resumed run's predecessors


def log(stage, step, **vals):
    LOG.append(dict(stage=stage, step=step, t=time.time(), **vals))
    if step % 50 == 0:
        print(stage, step, " ".join(f"{k}={v:.4f}" for k, v in vals.items()), flush=True)


def lr_at(frac, peak, warm=0.03):
    return peak * min(1.0, frac / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def run_budget(minutes, step_fn, opt, peak_lr, on_tick=None):
    """Calls step_fn(step) until the budget is spent, with warm-up and cosine decay by time."""
    start, step, last_tick = time.time(), 0, time.time()
    while True:
        frac = (time.time() - start) / (minutes * 60)
        if frac >= 1:
            return step
        for g in opt.param_groups:
            g["lr"] = lr_at(frac, peak_lr)
        step_fn(step)
        step += 1
        if on_tick and time.time() - last_tick > 300:
            on_tick()
            last_tick = time.time()


# ---- safetensors -------------------------------------------------------------------------


def write_safetensors(path, tensors, config, f16=True):
    """F16 for float weights (the C loader widens them) unless f16 is False; integers keep
    their width (I64 or I32)."""
    header, blobs, off = {"__metadata__": {"config": json.dumps(config), "format": "paella-default-v1"}}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu()
        if t.dtype.is_floating_point:
            arr, dt = (t.to(torch.float16).numpy(), "F16") if f16 else (t.float().numpy(), "F32")
        elif t.dtype == torch.int64:
            arr, dt = t.numpy(), "I64"
        else:
            arr, dt = t.to(torch.int32).numpy(), "I32"
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


DTYPES = {"F16": np.float16, "F32": np.float32, "I64": np.int64, "I32": np.int32}


def read_safetensors(path):
    """(tensors with floats widened to F32, the config metadata)"""
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    out = {}
    for k, v in header.items():
        b, e = v["data_offsets"]
        t = torch.from_numpy(np.frombuffer(data[b:e], dtype=DTYPES[v["dtype"]]).reshape(v["shape"]).copy())
        out[k] = t.float() if t.dtype == torch.float16 else t
    return out, json.loads(meta.get("config", "{}"))


def load_exported(model, path):
    sd, _ = read_safetensors(path)
    own = model.state_dict()
    model.load_state_dict({k: sd[k].to(own[k].dtype) for k in own})
    return model


def export(model, path, config, skip=()):
    sd = model.state_dict_for_export() if hasattr(model, "state_dict_for_export") else model.state_dict()
    write_safetensors(path, {k: v for k, v in sd.items() if not any(s in k for s in skip)}, config)


# ---- stages ------------------------------------------------------------------------------


def train_vqgan(images, minutes, out):
    torch.manual_seed(1)
    vq = nets.VQModel(**VQGAN)
    opt = torch.optim.Adam(vq.parameters(), lr=2e-3)
    N, K = images.shape[0], VQGAN["codebook_size"]
    with torch.no_grad():
        z = vq.encode_latent(images[torch.randperm(N)[:256]]).permute(0, 2, 3, 1).reshape(-1, VQGAN["c_latent"])
        vq.vquantizer.codebook.weight.copy_(z[torch.randint(0, z.shape[0], (K,))] + 0.01 * torch.randn(K, z.shape[1]))
    usage = torch.zeros(K)
    bn = vq.down_blocks[3][1]
    start = time.time()

    def step(i):
        nonlocal usage
        if time.time() - start > 0.8 * minutes * 60:
            bn.eval()  # the C encoder uses the running statistics: fit the codebook to them
        x = images[torch.randint(0, N, (64,))]
        z = vq.encode_latent(x)
        idx, q = vq.quantize(z)
        rec = vq.decode(z + (q - z).detach())
        l_rec = F.mse_loss(rec, x)
        loss = l_rec + F.mse_loss(q, z.detach()) + 0.25 * F.mse_loss(z, q.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
        usage += torch.bincount(idx.flatten(), minlength=K)
        if i % 100 == 99:  # restart codes unused for 100 steps on this batch's latents
            dead = (usage == 0).nonzero().flatten()
            if len(dead):
                flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1])
                with torch.no_grad():
                    vq.vquantizer.codebook.weight[dead] = flat[torch.randint(0, flat.shape[0], (len(dead),))]
            usage = torch.zeros(K)
        log("vqgan", i, loss=loss.item(), rec=l_rec.item())

    steps = run_budget(minutes, step, opt, 2e-3)
    vq.eval()
    with torch.no_grad():
        tokens = torch.cat([vq.quantize(vq.encode_latent(images[i:i + 256]))[0] for i in range(0, N, 256)])
        rec = torch.cat([vq.decode(vq.vquantizer.codebook(tokens[i:i + 256]).permute(0, 3, 1, 2))
                         for i in range(0, N, 256)])
    print(f"vqgan: {steps} steps, eval mse {F.mse_loss(rec, images).item():.5f}, "
          f"{len(tokens.unique())} codes used", flush=True)
    export(vq, os.path.join(out, "default_vqgan.safetensors"), VQGAN)
    return tokens, rec


def clip_batch_ids(ids):
    """Cut after the last EOT of the batch (causal attention: the pooled outputs do not change)."""
    L = int((ids == 49407).nonzero()[:, 1].max()) + 1
    return ids[:, :L]


def build_clip():
    text = nets.ClipText(CLIP_TEXT["vocab_size"], CLIP_TEXT["max_position_embeddings"], CLIP_TEXT["hidden_size"],
                         CLIP_TEXT["intermediate_size"], CLIP_TEXT["num_hidden_layers"],
                         CLIP_TEXT["num_attention_heads"], CLIP_PROJ)
    vision = nets.ClipVision(CLIP_VISION["image_size"], CLIP_VISION["patch_size"], CLIP_VISION["hidden_size"],
                             CLIP_VISION["intermediate_size"], CLIP_VISION["num_hidden_layers"],
                             CLIP_VISION["num_attention_heads"], CLIP_PROJ)
    return text, vision


def clip_embeddings(text, vision, images, cap_ids):
    """CLIP image embeddings of all images and text embeddings of all captions."""
    with torch.no_grad():
        px = nets.clip_normalise(images)
        img = torch.cat([vision(px[i:i + 256]) for i in range(0, len(px), 256)])
        txt = torch.cat([text(clip_batch_ids(cap_ids[i:i + 256])) for i in range(0, len(cap_ids), 256)])
    return img, txt


def train_clip(images, cap_ids, cap_img, minutes, out):
    torch.manual_seed(2)
    text, vision = build_clip()
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = list(text.parameters()) + list(vision.parameters()) + [logit_scale]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    px = nets.clip_normalise(images)
    N = images.shape[0]

    def step(i):
        imgs = torch.randperm(N)[:128]
        caps = torch.tensor([np.random.choice(np.nonzero(cap_img == j)[0]) for j in imgs.tolist()])
        te = F.normalize(text(clip_batch_ids(cap_ids[caps])), dim=-1)
        ie = F.normalize(vision(px[imgs]), dim=-1)
        logits = logit_scale.exp().clamp(max=100) * te @ ie.t()
        target = torch.arange(len(imgs))
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        opt.zero_grad()
        loss.backward()
        opt.step()
        log("clip", i, loss=loss.item())

    steps = run_budget(minutes, step, opt, 1e-3)
    img_emb, txt_emb = clip_embeddings(text, vision, images, cap_ids)
    with torch.no_grad():
        # Rescale both projections so every embedding coordinate has RMS 1 (the contrastive loss
        # is scale-free; the prior's diffusion and Paella's mappers want unit-scale inputs).
        si, st = img_emb.pow(2).mean().sqrt(), txt_emb.pow(2).mean().sqrt()
        vision.visual_projection.weight /= si
        text.text_projection.weight /= st
        img_emb, txt_emb = img_emb / si, txt_emb / st
        sim = F.normalize(txt_emb, dim=-1) @ F.normalize(img_emb, dim=-1).t()
        top1 = (sim.argmax(1) == torch.from_numpy(cap_img)).float().mean().item()
    print(f"clip: {steps} steps, caption->image top-1 {top1:.3f}", flush=True)
    sd = {**text.state_dict(), **vision.state_dict()}
    write_safetensors(os.path.join(out, "default_clip.safetensors"), sd,
                      dict(projection_dim=CLIP_PROJ, text_config=CLIP_TEXT, vision_config=CLIP_VISION))
    return text, img_emb, txt_emb


def train_prior(img_emb, txt_emb, cap_img, minutes, out):
    torch.manual_seed(3)
    prior = nets.Prior(**PRIOR)
    opt = torch.optim.AdamW(prior.parameters(), lr=1e-3, weight_decay=0.01)
    n = txt_emb.shape[0]
    x0_all = img_emb[torch.from_numpy(cap_img).long()]

    def step(i):
        b = torch.randint(0, n, (256,))
        x0, c = x0_all[b], txt_emb[b] * (torch.rand(256, 1) > 0.1).float()  # zero = unconditional
        t = torch.rand(256)
        ac = nets.alpha_cumprod(t)[:, None]
        eps = torch.randn_like(x0)
        loss = F.mse_loss(prior(ac.sqrt() * x0 + (1 - ac).sqrt() * eps, t, c), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log("prior", i, loss=loss.item())

    steps = run_budget(minutes, step, opt, 1e-3)
    print(f"prior: {steps} steps", flush=True)
    export(prior, os.path.join(out, "default_prior.safetensors"), PRIOR)


def byt5_ids(texts):
    """UTF-8 bytes + 3, then </s> = 1; padded with 0, and the padding mask."""
    rows = [[b + 3 for b in t.encode("utf-8")] + [1] for t in texts]
    L = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
    return ids, ids == 0


def train_paella(tokens, captions, cap_img, txt_emb, img_emb, empty_txt_emb, minutes, out, resume=False):
    """resume: continue from the exported F16 weights (a fresh optimiser, half the peak rate)."""
    torch.manual_seed(4)
    t5 = nets.T5Encoder(T5["vocab_size"], T5["d_model"], T5["d_kv"], T5["d_ff"], T5["num_layers"], T5["num_heads"],
                        T5["relative_attention_num_buckets"], T5["relative_attention_max_distance"])
    paella = nets.Paella(**PAELLA)
    with torch.no_grad():  # upstream init: zero TimestepBlock mappers, GRN, clf; out_mapper = embedding
        for m in paella.modules():
            if isinstance(m, nets.TimestepBlock):
                m.mapper.weight.zero_()
        paella.out_mapper[1].weight.copy_(paella.in_mapper[0].weight[:, :, None, None])
    first_step = 0
    if resume:
        torch.manual_seed(5)
        load_exported(t5, os.path.join(out, "default_t5.safetensors"))
        load_exported(paella, os.path.join(out, "default_paella.safetensors"))
        first_step = 1 + max(r["step"] for r in LOG if r["stage"] == "paella")
    params = list(t5.parameters()) + list(paella.parameters())
    peak = 5e-4 if resume else 1e-3
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=0.01)
    K, n, B = PAELLA["num_labels"], len(captions), 64
    cap_img_t = torch.from_numpy(cap_img).long()

    def save():
        export(t5, os.path.join(out, "default_t5.safetensors"), T5)
        export(paella, os.path.join(out, "default_paella.safetensors"), PAELLA)
        write_log(out)
        print("exported paella + t5", flush=True)

    def step(i):
        b = torch.randint(0, n, (B,))
        uncond = torch.rand(B) < 0.1
        no_image = uncond | (torch.rand(B) < 0.3)
        texts = ["" if u else captions[j] for u, j in zip(uncond.tolist(), b.tolist())]
        ids, pad = byt5_ids(texts)
        clip = torch.where(uncond[:, None], empty_txt_emb[None], txt_emb[b])
        clip_image = img_emb[cap_img_t[b]] + 0.3 * torch.randn(B, CLIP_PROJ)
        c_embed, c_pad = paella.cond_embed(t5(ids, pad), pad, clip, clip_image, no_image)
        x0 = tokens[cap_img_t[b]]
        t = torch.rand(B)
        mask = torch.rand(x0.shape) <= t[:, None, None]
        noised = torch.where(mask, torch.randint_like(x0, 0, K), x0)
        logits = paella(noised, t, c_embed, c_pad)
        ce = F.cross_entropy(logits, x0, label_smoothing=0.1, reduction="none")
        weight = 1 - (~mask).float() * ((1 - t[:, None, None]) * (1 - 0.3))
        loss = (ce * weight).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        acc = (logits.argmax(1) == x0)[mask].float().mean().item() if mask.any() else 0.0
        log("paella", first_step + i, loss=loss.item(), acc_masked=acc)

    steps = run_budget(minutes, step, opt, peak, on_tick=save)
    print(f"paella: {steps} steps", flush=True)
    save()


def write_log(out):
    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump({"wall_seconds": EARLIER_WALL + time.time() - T0, "log": LOG}, f)
    plot(os.path.join(out, "loss.png"))


def plot(path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    stages = ["vqgan", "clip", "prior", "paella"]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for ax, s in zip(axes, stages):
        rows = [r for r in LOG if r["stage"] == s]
        if not rows:
            continue
        steps = np.array([r["step"] for r in rows])
        loss = np.array([r["loss"] for r in rows])
        w = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(w) / w, mode="valid")
        ax.plot(steps, loss, alpha=0.25)
        ax.plot(steps[w - 1:], smooth)
        ax.set_title(f"{s} ({len(rows)} steps)")
        ax.set_xlabel("step")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def resume_paella(data_path, out, minutes):
    """Continues the Paella stage of an earlier run in `out` for `minutes` more."""
    global EARLIER_WALL
    prev = json.load(open(os.path.join(out, "train_log.json")))
    LOG.extend(prev["log"])
    EARLIER_WALL = prev["wall_seconds"]
    d = np.load(data_path)
    images = torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float() / 255.0
    captions, cap_img, cap_ids = list(d["captions"]), d["caption_image"], torch.from_numpy(d["clip_ids"]).long()
    tokens = read_safetensors(os.path.join(out, "default_retrieval.safetensors"))[0]["tokens"].long()
    text, vision = build_clip()
    load_exported(text, os.path.join(out, "default_clip.safetensors"))
    load_exported(vision, os.path.join(out, "default_clip.safetensors"))
    img_emb, txt_emb = clip_embeddings(text, vision, images, cap_ids)
    train_paella(tokens, captions, cap_img, txt_emb, img_emb, empty_clip_embedding(text), minutes, out, resume=True)
    write_log(out)


def refit_text(data_path, out, minutes):
    """The second phase of the default model's recipe: the first phase's CLIP towers (7 min)
    were barely trained (caption -> image top-1 about 1%), so the prior could not map a caption
    to its image embedding and Paella, which sees the true image embedding in training, got a
    generic one at inference. Retrains CLIP and the prior for longer, then continues Paella."""
    global EARLIER_WALL
    prev = json.load(open(os.path.join(out, "train_log.json")))
    LOG.extend(r for r in prev["log"] if r["stage"] not in ("clip", "prior"))
    EARLIER_WALL = prev["wall_seconds"]
    torch.manual_seed(6)
    np.random.seed(6)
    d = np.load(data_path)
    images = torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float() / 255.0
    captions, cap_img, cap_ids = list(d["captions"]), d["caption_image"], torch.from_numpy(d["clip_ids"]).long()
    tokens = read_safetensors(os.path.join(out, "default_retrieval.safetensors"))[0]["tokens"].long()
    text, img_emb, txt_emb = train_clip(images, cap_ids, cap_img, minutes[0], out)
    train_prior(img_emb, txt_emb, cap_img, minutes[1], out)
    write_log(out)
    train_paella(tokens, captions, cap_img, txt_emb, img_emb, empty_clip_embedding(text), minutes[2], out, resume=True)
    write_log(out)


def empty_clip_embedding(text):
    with torch.no_grad():
        return text(torch.tensor([[49406, 49407]]))[0]  # "" -> [SOT, EOT]


def main():
    data_path, out = sys.argv[1], sys.argv[2]
    if sys.argv[3] == "--resume-paella":
        resume_paella(data_path, out, float(sys.argv[4]))
        return
    if sys.argv[3] == "--refit-text":
        refit_text(data_path, out, [float(v) for v in sys.argv[4:7]])
        return
    minutes = [float(v) for v in sys.argv[3:7]]
    torch.manual_seed(0)
    np.random.seed(0)
    d = np.load(data_path)
    images = torch.from_numpy(d["images"]).permute(0, 3, 1, 2).float() / 255.0  # (N, 3, 32, 32)
    captions, cap_img, cap_ids = list(d["captions"]), d["caption_image"], torch.from_numpy(d["clip_ids"]).long()
    os.makedirs(out, exist_ok=True)
    tokens, _ = train_vqgan(images, minutes[0], out)
    write_safetensors(os.path.join(out, "default_retrieval.safetensors"), {"tokens": tokens.to(torch.int32)}, {
        "names": [str(s) for s in d["names"]], "native_size": 32})
    text, img_emb, txt_emb = train_clip(images, cap_ids, cap_img, minutes[1], out)
    train_prior(img_emb, txt_emb, cap_img, minutes[2], out)
    train_paella(tokens, captions, cap_img, txt_emb, img_emb, empty_clip_embedding(text), minutes[3], out)
    write_log(out)
    print(f"total wall time {(time.time() - T0) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
