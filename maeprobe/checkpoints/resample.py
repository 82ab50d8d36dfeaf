"""Probing at another input size (``load(img_size=...)``). The resampling rules live with the models
(``maeprobe.models.pos_embed``), below both the models and the checkpoint loader; re-exported here."""
from ..models.pos_embed import POS_RESAMPLE, REL_POS_RESAMPLE, resample_pos_embed, resample_rel_pos_table

__all__ = ["POS_RESAMPLE", "REL_POS_RESAMPLE", "resample_pos_embed", "resample_rel_pos_table"]
