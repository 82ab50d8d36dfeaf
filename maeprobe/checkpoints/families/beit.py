"""BEiT / BEiT v2 (Bao et al., 2022; Peng et al., 2022) in microsoft/unilm's layout (timm's ``Beit`` names) and
HuggingFace BEiT: a relative position bias, per layer or shared; built as timm's ``Beit``."""
from .base import HALF, Family, HfType, Layout

FAMILY = Family("beit", "BEiT", *HALF, builder="beit")


def is_beit(sd: dict) -> bool:
    """BEiT / BEiT v2: a relative position bias, per layer or shared."""
    return any(k.endswith(".attn.relative_position_bias_table") for k in sd) or \
        "rel_pos_bias.relative_position_bias_table" in sd


def convert_beit(sd: dict) -> tuple[dict, list[str]]:
    """unilm BEiT / BEiT v2 keys -> timm Beit (timm's filter drops the relative position index buffers);
    pretraining-only parts (mask token, MIM head, BEiT v2's ``cls_pt_layers``) are dropped."""
    notes = []
    dropped = [k for k in sd if k.startswith(("lm_head.", "cls_pt_layers.", "mask_token"))]
    if dropped:
        notes.append(f"ignored the masked-image-modelling parts ({len(dropped)} tensors)")
    sd = {k: v for k, v in sd.items() if k not in dropped and "relative_position_index" not in k}
    return sd, notes


def _matches(sd: dict, container: str) -> bool:
    return is_beit(sd)


LAYOUT = Layout(FAMILY, _matches, convert_beit, named_by=("file",))
HF_TYPES = {"beit": HfType("beit", {"hidden_act": "gelu", "layer_norm_eps": 1e-12})}
