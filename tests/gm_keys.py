"GM's checkpoint key names, built from MONAI core's: the inverse of MONAI core's `load_old_state_dict` renames."


def to_gm(sd: dict) -> dict:
    "Attention (`to_q/to_k/to_v/proj_attn`, cross-attention `to_out.0`) and upsampling (`conv`) keys as GM saved them."
    out = {}
    for k, v in sd.items():
        if ".transformer_blocks." in k: k = k.replace(".out_proj.", ".to_out.0.")
        elif ".attn.out_proj." in k: k = k.replace(".attn.out_proj.", ".proj_attn.")
        elif ".attn.to_" in k: k = k.replace(".attn.to_", ".to_")
        out[k.replace(".postconv.", ".conv.")] = v
    return out
