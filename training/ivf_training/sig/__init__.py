"""TeSG's Semantic Information Generator (offline): captions, keyword removal, DiffEdit masks, text tokens.

Optional part of the training package: the real models need ``transformers`` and ``diffusers``
(``pip install 'ivf-perception-training[tesg-sig]'``), imported only by :mod:`.loaders`. The
keyword, mask and generator code runs on any components with the same call interfaces.
"""

from .diffedit import diffedit_mask, encode_timestep, guidance_map, mask_from_guidance_map
from .generator import (
    BlipCaptioner,
    SemanticInformationGenerator,
    SIGComponents,
    SIGResult,
    encode_text,
    sig_input_size,
    vocabulary_of,
)
from .keywords import CLASS_SYNONYMS, STUFF_CLASSES, KeywordVocabulary, RemovalResult, plural, remove_keywords
from .settings import SIGSettings, SIGSettingsError, load_sig_settings

__all__ = [
    "diffedit_mask", "encode_timestep", "guidance_map", "mask_from_guidance_map",
    "BlipCaptioner", "SemanticInformationGenerator", "SIGComponents", "SIGResult", "encode_text",
    "sig_input_size", "vocabulary_of",
    "CLASS_SYNONYMS", "STUFF_CLASSES", "KeywordVocabulary", "RemovalResult", "plural", "remove_keywords",
    "SIGSettings", "SIGSettingsError", "load_sig_settings",
]
