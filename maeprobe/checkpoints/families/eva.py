"""EVA / EVA-02 (Fang et al., 2023) in timm's ``Eva`` layout: q/v biases or separate q/k/v projections, gamma
LayerScale or SwiGLU, without BEiT's relative position bias; built as timm's ``Eva``."""
from .base import OPENAI_CLIP, Family, Layout
from .beit import is_beit

FAMILY = Family("eva", "EVA", *OPENAI_CLIP, builder="eva")


def is_eva(sd: dict) -> bool:
    """timm's EVA / EVA-02 layout: q/v biases or separate q/k/v projections, gamma LayerScale or SwiGLU,
    without BEiT's relative position bias."""
    block = "blocks.0."
    return not is_beit(sd) and any(block + k in sd for k in (
        "attn.q_bias", "attn.q_proj.weight", "gamma_1", "mlp.fc1_g.weight", "attn.norm.weight", "mlp.norm.weight"))


def _matches(sd: dict, container: str) -> bool:
    return is_eva(sd)


LAYOUT = Layout(FAMILY, _matches, named_by=("file",))
