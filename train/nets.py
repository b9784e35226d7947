"""The five networks of the Paella v3 stack, written from tests/golden/README.md (not from the
upstream code), with the published state_dict key names so that the C loaders read the
exported safetensors unchanged. Training-only additions (key padding masks so that a padded
batch computes what the C pipeline computes on each unpadded prompt) change no weights.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def r_embedding(r, c_r):
    """[sin(r*1e4*f_k) | cos(r*1e4*f_k)], f_k = exp(-k*ln(1e4)/(c_r/2-1)) in float32."""
    half = c_r // 2
    f = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    arg = (r * 10000.0)[:, None] * f[None, :]
    return torch.cat([arg.sin(), arg.cos()], dim=1)


def ln_channels(x, eps=1e-6):
    """Affine-free LayerNorm over dim 1 of an NCHW tensor."""
    return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=eps).permute(0, 3, 1, 2)


class LayerNorm2d(nn.Module):
    def forward(self, x):
        return ln_channels(x)


# ---- Paella ------------------------------------------------------------------------------


class GlobalResponseNorm(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, c))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, c))

    def forward(self, x):  # (B, H, W, C)
        g = torch.sqrt((x * x).sum(dim=(1, 2), keepdim=True))
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * n) + self.beta + x


class ResBlock(nn.Module):
    def __init__(self, c, c_skip=0, k=3):
        super().__init__()
        self.depthwise = nn.Conv2d(c + c_skip, c, k, padding=k // 2, groups=c)
        self.norm = LayerNorm2d()
        self.channelwise = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), GlobalResponseNorm(4 * c), nn.Dropout(0.0),
                                         nn.Linear(4 * c, c))

    def forward(self, x, skip=None):
        res = x
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = self.norm(self.depthwise(x)).permute(0, 2, 3, 1)
        return self.channelwise(x).permute(0, 3, 1, 2) + res


class TimestepBlock(nn.Module):
    def __init__(self, c, c_r):
        super().__init__()
        self.mapper = nn.Linear(c_r, 2 * c)

    def forward(self, x, r_embed):
        a, b = self.mapper(r_embed)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + a) + b


class Attention2D(nn.Module):
    def __init__(self, c, nhead):
        super().__init__()
        self.attn = nn.MultiheadAttention(c, nhead, bias=True, batch_first=True)

    def forward(self, x, kv, kv_pad):  # x (B, C, H, W), kv (B, L, C), kv_pad (B, L) True = absent
        B, C, H, W = x.shape
        q = x.view(B, C, H * W).permute(0, 2, 1)
        keys = torch.cat([q, kv], dim=1)
        mask = torch.cat([torch.zeros(B, H * W, dtype=torch.bool), kv_pad], dim=1)
        out = self.attn(q, keys, keys, key_padding_mask=mask, need_weights=False)[0]
        return out.permute(0, 2, 1).reshape(B, C, H, W)


class AttnBlock(nn.Module):
    def __init__(self, c, c_cond, nhead):
        super().__init__()
        self.norm = LayerNorm2d()
        self.attention = Attention2D(c, nhead)
        self.kv_mapper = nn.Sequential(nn.SiLU(), nn.Linear(c_cond, c))

    def forward(self, x, c_embed, kv_pad):
        return x + self.attention(self.norm(x), self.kv_mapper(c_embed), kv_pad)


class Paella(nn.Module):
    def __init__(self, c_in, c_out, num_labels, c_r, patch_size, c_cond, c_hidden, nhead, blocks, level_config,
                 clip_embd, byt5_embd, clip_seq_len, kernel_size=3, dropout=0, self_attn=True):
        super().__init__()
        self.c_r, self.c_cond, self.clip_seq_len = c_r, c_cond, clip_seq_len
        self.byt5_mapper = nn.Linear(byt5_embd, c_cond)
        self.clip_mapper = nn.Linear(clip_embd, c_cond * clip_seq_len)
        self.clip_image_mapper = nn.Linear(clip_embd, c_cond * clip_seq_len)
        self.in_mapper = nn.Sequential(nn.Embedding(num_labels, c_in), nn.LayerNorm(c_in, elementwise_affine=False,
                                                                                    eps=1e-6))
        self.embedding = nn.Sequential(nn.PixelUnshuffle(patch_size), nn.Conv2d(c_in * patch_size ** 2, c_hidden[0], 1),
                                       LayerNorm2d())

        def block(kind, c, heads, c_skip=0):
            if kind == "C":
                return ResBlock(c, c_skip, kernel_size)
            if kind == "T":
                return TimestepBlock(c, c_r)
            return AttnBlock(c, c_cond, heads)

        levels = len(c_hidden)
        self.down_blocks = nn.ModuleList()
        for i in range(levels):
            level = nn.ModuleList()
            if i > 0:
                level.append(nn.Sequential(LayerNorm2d(), nn.Conv2d(c_hidden[i - 1], c_hidden[i], 2, stride=2)))
            for _ in range(blocks[i]):
                for kind in level_config[i]:
                    level.append(block(kind, c_hidden[i], nhead[i]))
            self.down_blocks.append(level)
        self.up_blocks = nn.ModuleList()
        for i in reversed(range(levels)):
            level = nn.ModuleList()
            for j in range(blocks[i]):
                for k, kind in enumerate(level_config[i]):
                    skip = c_hidden[i] if i < levels - 1 and j == 0 and k == 0 else 0
                    level.append(block(kind, c_hidden[i], nhead[i], skip))
            if i > 0:
                level.append(nn.Sequential(LayerNorm2d(), nn.ConvTranspose2d(c_hidden[i], c_hidden[i - 1], 2, stride=2)))
            self.up_blocks.append(level)
        self.clf = nn.Sequential(LayerNorm2d(), nn.Conv2d(c_hidden[0], c_out * patch_size ** 2, 1),
                                 nn.PixelShuffle(patch_size))
        self.out_mapper = nn.Sequential(LayerNorm2d(), nn.Conv2d(c_out, num_labels, 1, bias=False))

    def cond_embed(self, byt5, byt5_pad, clip, clip_image, image_absent):
        """Conditioning sequence (B, L + 2*seq, c_cond) and its key padding mask.

        byt5 (B, L, D) with byt5_pad (B, L) True at padding; clip / clip_image (B, Dc);
        image_absent (B) True where the row has no CLIP image tokens (upstream passes None)."""
        B, s = clip.shape[0], self.clip_seq_len
        seq = torch.cat([self.byt5_mapper(byt5), self.clip_mapper(clip).view(B, s, -1),
                         self.clip_image_mapper(clip_image).view(B, s, -1)], dim=1)
        pad = torch.cat([byt5_pad, torch.zeros(B, s, dtype=torch.bool), image_absent[:, None].expand(B, s)], dim=1)
        return F.layer_norm(seq, (self.c_cond,), eps=1e-6), pad

    def forward(self, x, r, c_embed, c_pad):  # x (B, H, W) int64 -> logits (B, K, H, W)
        r_embed = r_embedding(r, self.c_r)
        x = self.embedding(self.in_mapper(x).permute(0, 3, 1, 2))

        def run(b, x, skip=None):
            if isinstance(b, ResBlock):
                return b(x, skip)
            if isinstance(b, TimestepBlock):
                return b(x, r_embed)
            if isinstance(b, AttnBlock):
                return b(x, c_embed, c_pad)
            return b(x)

        level_outputs = []
        for level in self.down_blocks:
            for b in level:
                x = run(b, x)
            level_outputs.insert(0, x)
        x = level_outputs[0]
        for i, level in enumerate(self.up_blocks):
            for j, b in enumerate(level):
                x = run(b, x, level_outputs[i] if i > 0 and j == 0 and isinstance(b, ResBlock) else None)
        return self.out_mapper(self.clf(x))


# ---- VQGAN f4 ----------------------------------------------------------------------------


class VQResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gammas = nn.Parameter(torch.zeros(6))
        self.depthwise = nn.Sequential(nn.ReplicationPad2d(1), nn.Conv2d(c, c, 3, groups=c))
        self.channelwise = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))

    def forward(self, x):
        g = self.gammas
        t = ln_channels(x) * (1 + g[0]) + g[1]
        x = x + self.depthwise(t) * g[2]
        t = ln_channels(x) * (1 + g[3]) + g[4]
        return x + self.channelwise(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) * g[5]


class Codebook(nn.Module):
    def __init__(self, k, c):
        super().__init__()
        self.codebook = nn.Embedding(k, c)


class VQModel(nn.Module):
    """levels = 2 (f4): PixelUnshuffle(2) and one stride-2 conv."""

    def __init__(self, levels, bottleneck_blocks, c_hidden, c_latent, codebook_size, scale_factor):
        super().__init__()
        assert levels == 2
        c0, c1 = c_hidden // 2, c_hidden
        self.in_block = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(12, c0, 1))
        self.down_blocks = nn.Sequential(VQResBlock(c0), nn.Conv2d(c0, c1, 4, stride=2, padding=1), VQResBlock(c1),
                                         nn.Sequential(nn.Conv2d(c1, c_latent, 1, bias=False), nn.BatchNorm2d(c_latent)))
        self.vquantizer = Codebook(codebook_size, c_latent)
        ups = [nn.Sequential(nn.Conv2d(c_latent, c1, 1))] + [VQResBlock(c1) for _ in range(bottleneck_blocks)]
        ups += [nn.ConvTranspose2d(c1, c0, 4, stride=2, padding=1), VQResBlock(c0)]
        self.up_blocks = nn.Sequential(*ups)
        self.out_block = nn.Sequential(nn.Conv2d(c0, 12, 1), nn.PixelShuffle(2))

    def encode_latent(self, img):  # (B, 3, H, W) in [0, 1] -> (B, c_latent, H/4, W/4)
        return self.down_blocks(self.in_block(img))

    def quantize(self, z):  # -> indices (B, h, w), codebook vectors (B, c, h, w)
        B, C, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, C)
        cb = self.vquantizer.codebook.weight
        d = (cb * cb).sum(1)[None, :] + (flat * flat).sum(1, keepdim=True) - 2 * flat @ cb.t()
        idx = d.argmin(dim=1)
        q = cb[idx].view(B, h, w, C).permute(0, 3, 1, 2)
        return idx.view(B, h, w), q

    def decode(self, q):
        return self.out_block(self.up_blocks(q))


# ---- T5 encoder (ByT5 style) -------------------------------------------------------------


def t5_bucket(rel, num_buckets, max_distance):
    half = num_buckets // 2
    out = (rel > 0).long() * half
    n = rel.abs()
    exact = half // 2
    large = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact) *
                     (half - exact)).long()
    large = large.clamp(max=half - 1)
    return out + torch.where(n < exact, n, large)


class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6) * self.weight


class T5Attention(nn.Module):
    def __init__(self, d, d_kv, heads, num_buckets, has_bias):
        super().__init__()
        self.h, self.dk = heads, d_kv
        self.q = nn.Linear(d, heads * d_kv, bias=False)
        self.k = nn.Linear(d, heads * d_kv, bias=False)
        self.v = nn.Linear(d, heads * d_kv, bias=False)
        self.o = nn.Linear(heads * d_kv, d, bias=False)
        if has_bias:
            self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def forward(self, x, bias):  # bias (B or 1, h, L, L) incl. the padding mask
        B, L, _ = x.shape
        q, k, v = (m(x).view(B, L, self.h, self.dk).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)  # unscaled, as T5
        return self.o((a @ v).transpose(1, 2).reshape(B, L, -1))


class T5Layer(nn.Module):
    def __init__(self, d, d_kv, d_ff, heads, num_buckets, first):
        super().__init__()
        self.layer = nn.ModuleList([nn.Module(), nn.Module()])
        self.layer[0].SelfAttention = T5Attention(d, d_kv, heads, num_buckets, first)
        self.layer[0].layer_norm = RMSNorm(d)
        ff = nn.Module()
        ff.wi_0 = nn.Linear(d, d_ff, bias=False)
        ff.wi_1 = nn.Linear(d, d_ff, bias=False)
        ff.wo = nn.Linear(d_ff, d, bias=False)
        self.layer[1].DenseReluDense = ff
        self.layer[1].layer_norm = RMSNorm(d)

    def forward(self, x, bias):
        x = x + self.layer[0].SelfAttention(self.layer[0].layer_norm(x), bias)
        h = self.layer[1].layer_norm(x)
        ff = self.layer[1].DenseReluDense
        return x + ff.wo(F.gelu(ff.wi_0(h), approximate="tanh") * ff.wi_1(h))


class T5Encoder(nn.Module):
    def __init__(self, vocab_size, d_model, d_kv, d_ff, num_layers, num_heads, num_buckets=32, max_distance=128):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.shared = nn.Embedding(vocab_size, d_model)
        self.encoder = nn.Module()
        self.encoder.block = nn.ModuleList(
            [T5Layer(d_model, d_kv, d_ff, num_heads, num_buckets, i == 0) for i in range(num_layers)])
        self.encoder.final_layer_norm = RMSNorm(d_model)

    def forward(self, ids, pad):  # ids (B, L), pad (B, L) True at padding -> (B, L, d_model)
        L = ids.shape[1]
        pos = torch.arange(L)
        bucket = t5_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        rel = self.encoder.block[0].layer[0].SelfAttention.relative_attention_bias(bucket)  # (L, L, h)
        bias = rel.permute(2, 0, 1)[None] + torch.where(pad, -1e9, 0.0)[:, None, None, :]
        x = self.shared(ids)
        for blk in self.encoder.block:
            x = blk(x, bias)
        return self.encoder.final_layer_norm(x)

    def state_dict_for_export(self):
        sd = dict(self.state_dict())
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
        return sd


# ---- CLIP towers -------------------------------------------------------------------------


class ClipLayer(nn.Module):
    def __init__(self, c, inter, heads):
        super().__init__()
        self.heads = heads
        self.layer_norm1 = nn.LayerNorm(c)
        self.layer_norm2 = nn.LayerNorm(c)
        self.self_attn = nn.Module()
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, n, nn.Linear(c, c))
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(c, inter)
        self.mlp.fc2 = nn.Linear(inter, c)

    def forward(self, x, mask):
        B, L, C = x.shape
        h = self.layer_norm1(x)
        sa = self.self_attn
        q, k, v = (m(h).view(B, L, self.heads, -1).transpose(1, 2) for m in (sa.q_proj, sa.k_proj, sa.v_proj))
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // self.heads) + mask, dim=-1)
        x = x + sa.out_proj((a @ v).transpose(1, 2).reshape(B, L, C))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.layer_norm2(x))))


def clip_tower(c, inter, layers, heads):
    t = nn.Module()
    t.encoder = nn.Module()
    t.encoder.layers = nn.ModuleList([ClipLayer(c, inter, heads) for _ in range(layers)])
    return t


class ClipText(nn.Module):
    """Registered under text_model.* and text_projection inside Clip."""

    def __init__(self, vocab, positions, c, inter, layers, heads, proj):
        super().__init__()
        self.text_model = clip_tower(c, inter, layers, heads)
        self.text_model.embeddings = nn.Module()
        self.text_model.embeddings.token_embedding = nn.Embedding(vocab, c)
        self.text_model.embeddings.position_embedding = nn.Embedding(positions, c)
        self.text_model.final_layer_norm = nn.LayerNorm(c)
        self.text_projection = nn.Linear(c, proj, bias=False)

    def forward(self, ids):  # (B, L), L may be cut after the last EOT (causal: same result)
        tm = self.text_model
        L = ids.shape[1]
        x = tm.embeddings.token_embedding(ids) + tm.embeddings.position_embedding.weight[:L]
        mask = torch.triu(torch.full((L, L), float("-inf")), diagonal=1)
        for layer in tm.encoder.layers:
            x = layer(x, mask)
        x = tm.final_layer_norm(x)
        return self.text_projection(x[torch.arange(x.shape[0]), ids.argmax(dim=1)])


class ClipVision(nn.Module):
    def __init__(self, image_size, patch, c, inter, layers, heads, proj):
        super().__init__()
        self.vision_model = clip_tower(c, inter, layers, heads)
        e = nn.Module()
        e.patch_embedding = nn.Conv2d(3, c, patch, stride=patch, bias=False)
        e.class_embedding = nn.Parameter(torch.randn(c) * 0.02)
        e.position_embedding = nn.Embedding((image_size // patch) ** 2 + 1, c)
        self.vision_model.embeddings = e
        self.vision_model.pre_layrnorm = nn.LayerNorm(c)
        self.vision_model.post_layernorm = nn.LayerNorm(c)
        self.visual_projection = nn.Linear(c, proj, bias=False)

    def forward(self, px):  # (B, 3, S, S) normalised with the CLIP mean/std
        vm = self.vision_model
        x = vm.embeddings.patch_embedding(px).flatten(2).transpose(1, 2)
        cls = vm.embeddings.class_embedding[None, None].expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + vm.embeddings.position_embedding.weight
        x = vm.pre_layrnorm(x)
        for layer in vm.encoder.layers:
            x = layer(x, 0.0)
        return self.visual_projection(vm.post_layernorm(x[:, 0]))


CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])


def clip_normalise(img):  # (B, 3, H, W) in [0, 1]
    return (img - CLIP_MEAN[None, :, None, None]) / CLIP_STD[None, :, None, None]


# ---- prior -------------------------------------------------------------------------------


class Prior(nn.Module):
    def __init__(self, clip_r, c_hidden, c_r, num_blocks):
        super().__init__()
        self.c_r = c_r
        blocks = [nn.Linear(clip_r, c_hidden)]
        for _ in range(num_blocks):
            blocks.append(nn.Sequential(nn.Linear(clip_r + c_hidden + c_r, 4 * c_hidden, bias=False),
                                        nn.LayerNorm(4 * c_hidden), nn.GELU(),
                                        nn.Linear(4 * c_hidden, c_hidden, bias=False), nn.LayerNorm(c_hidden)))
        blocks.append(nn.Linear(c_hidden, clip_r))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x, r, c):
        r = r_embedding(r, self.c_r)
        x = self.blocks[0](x)
        for b in self.blocks[1:-1]:
            x = b(torch.cat([x, c, r], dim=1)) + x
        return self.blocks[-1](x)


def alpha_cumprod(t, s=0.008):
    ac = torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** 2 / math.cos(s / (1 + s) * math.pi * 0.5) ** 2
    return ac.clamp(1e-4, 0.9999)
