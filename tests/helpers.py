"Shared test helpers: GM's checkpoint key names and computation, seeded weights, a free TCP port for process groups."
import socket

import torch


def to_gm(sd: dict) -> dict:
    """GM's key names from MONAI core's (the inverse of MONAI core's `load_old_state_dict` renames): attention
    (`to_q/to_k/to_v/proj_attn`, cross-attention `to_out.0`) and upsampling (`conv`)."""
    out = {}
    for k, v in sd.items():
        if ".transformer_blocks." in k: k = k.replace(".out_proj.", ".to_out.0.")
        elif ".attn.out_proj." in k: k = k.replace(".attn.out_proj.", ".proj_attn.")
        elif ".attn.to_" in k: k = k.replace(".attn.to_", ".to_")
        out[k.replace(".postconv.", ".conv.")] = v
    return out


def gm_reference(core: torch.nn.Module, spade_eps: bool = False) -> torch.nn.Module:
    """In place, a MONAI core network made to compute what GM 0.2.3 computes with the same weights: GM's AttentionBlock
    never applies its `proj_attn` (so MONAI's `attn.out_proj` of each SpatialAttentionBlock becomes the identity), and
    GM's SPADE autoencoder normalises with torch's eps 1e-5 (`spade_eps`). Call it after taking `to_gm(state_dict)`."""
    with torch.no_grad():
        for m in core.modules():
            out_proj = getattr(getattr(m, "attn", None), "out_proj", None)
            if type(m).__name__ == "SpatialAttentionBlock" and isinstance(out_proj, torch.nn.Linear):
                out_proj.weight.copy_(torch.eye(*out_proj.weight.shape)); out_proj.bias.zero_()
            if spade_eps and type(m).__name__ == "SPADE":
                for n in m.param_free_norm.modules():
                    if isinstance(n, torch.nn.GroupNorm): n.eps = 1e-5
    return core


def randomize(m: torch.nn.Module, seed: int = 0, std: float = 0.2, eval: bool = True) -> torch.nn.Module:
    "Every parameter drawn N(0, std^2) from a seeded generator (no branch hidden by a zero init); eval mode by default."
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters(): p.copy_(torch.randn(p.shape, generator=g) * std)
    return m.eval() if eval else m


def free_port() -> int:
    "A TCP port on 127.0.0.1 that nothing listens on now (for torch.distributed's MASTER_PORT)."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
