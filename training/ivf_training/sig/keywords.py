"""TeSG keyword removal: the caption T minus the words naming the dataset's key objects, T̂.

Why this matters: DiffEdit's mask is where the diffusion model's noise prediction changes between
T and T̂, so T̂ must lose *every* word for an object the fusion should care about and nothing else.
The paper gives one example ("car") and no list (spec §2.1); the choices below are ours [R]:

* the keywords of a dataset are its **object** classes (things a detector or segmenter is asked
  for), not its stuff classes (road, sky, building, vegetation, sidewalk, unlabelled), whose
  removal would mark the whole scene as foreground;
* each class has a list of synonyms (a captioner says "man" or "pedestrian", not "person"), and
  each synonym its plural (regular rules plus an irregular table: man → men, person → people);
* **all** occurrences are removed, whole words only, longest phrase first ("traffic cone" before
  "cone"), case-insensitively; whitespace is then collapsed (and spaces before punctuation
  dropped). Nothing else is rewritten.

A caption without any keyword gives ``T̂ = T``; the generator then returns an empty mask and a
flag instead of dividing a zero noise difference by its zero mean.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ivf_perception.io.classes import CLASS_TABLES

__all__ = ["CLASS_SYNONYMS", "STUFF_CLASSES", "KeywordVocabulary", "RemovalResult", "plural", "remove_keywords"]

CLASS_SYNONYMS: dict[str, tuple[str, ...]] = {
    # MFNet / MSRS (and our generated scenes)
    "car": ("car", "vehicle", "automobile", "van", "suv", "taxi", "cab", "jeep", "sedan", "minivan"),
    "person": ("person", "people", "man", "woman", "pedestrian", "child", "boy", "girl", "kid", "guy",
               "lady", "human", "walker", "cyclist", "rider"),
    "bike": ("bike", "bicycle", "motorcycle", "motorbike", "scooter", "moped"),
    "curve": ("curb", "kerb"),
    "car_stop": ("car stop", "wheel stop", "parking stop", "parking block"),
    "guardrail": ("guardrail", "guard rail", "railing", "crash barrier", "barrier"),
    "color_cone": ("traffic cone", "cone", "pylon"),
    "bump": ("speed bump", "speed hump", "bump"),
    # PST900
    "fire_extinguisher": ("fire extinguisher", "extinguisher"),
    "backpack": ("backpack", "rucksack", "knapsack"),
    "hand_drill": ("hand drill", "power drill", "drill"),
    "survivor": ("survivor", "person", "people", "man", "woman", "body"),
    # FMB
    "traffic_lamp": ("traffic light", "traffic lamp", "traffic signal", "stoplight"),
    "traffic_sign": ("traffic sign", "road sign", "street sign", "stop sign", "sign"),
    "truck": ("truck", "lorry", "pickup"),
    "bus": ("bus", "coach"),
    "motorcycle": ("motorcycle", "motorbike", "scooter", "moped"),
    "bicycle": ("bicycle", "bike", "cyclist"),
    "pole": ("pole", "lamppost", "lamp post", "street light", "streetlight"),
}
"""Words a captioner may use for each class (singular; plurals are derived by :func:`plural`)."""

STUFF_CLASSES = frozenset({"unlabelled", "background", "road", "sidewalk", "building", "vegetation", "sky"})
"""Class names that are scene regions, not objects: never keywords."""

_IRREGULAR = {"man": "men", "woman": "women", "person": "people", "child": "children", "people": "people",
              "bus": "buses", "coach": "coaches", "body": "bodies", "lady": "ladies", "knapsack": "knapsacks",
              "guy": "guys", "taxi": "taxis"}


def plural(word_or_phrase: str) -> str:
    """English plural of a noun, or of the last word of a phrase ("traffic cone" → "traffic cones")."""
    *head, last = word_or_phrase.split(" ")
    if last in _IRREGULAR:
        p = _IRREGULAR[last]
    elif last.endswith(("s", "x", "z", "ch", "sh")):
        p = last + "es"
    elif last.endswith("y") and len(last) > 1 and last[-2] not in "aeiou":
        p = last[:-1] + "ies"
    else:
        p = last + "s"
    return " ".join([*head, p])


@dataclass(frozen=True)
class RemovalResult:
    """What :func:`remove_keywords` did to one caption.

    Attributes:
        caption: the original caption T.
        query: T̂, the caption without the keywords (equal to ``caption`` when none was found).
        removed: the removed words as they appeared, in order.
    """

    caption: str
    query: str
    removed: tuple[str, ...]

    @property
    def found(self) -> bool:
        """Whether at least one keyword was removed."""
        return bool(self.removed)


@dataclass(frozen=True)
class KeywordVocabulary:
    """The keyword forms of a set of object classes.

    Args:
        classes: the object class names whose words are removed.
        forms: every word form removed (synonyms and plurals), lower case.
    """

    classes: tuple[str, ...]
    forms: tuple[str, ...]

    @classmethod
    def for_classes(cls, classes: Iterable[str], extra: Mapping[str, Sequence[str]] | None = None) -> KeywordVocabulary:
        """The vocabulary of ``classes`` (stuff classes dropped) with optional extra synonyms per class.

        Raises:
            ValueError: a class has no synonym list here and none in ``extra``, or no object class is left.
        """
        extra = dict(extra or {})
        objects = tuple(c for c in classes if c not in STUFF_CLASSES)
        if not objects:
            raise ValueError(f"no object class among {list(classes)}: keyword removal needs at least one")
        forms: set[str] = set()
        for name in objects:
            words = list(CLASS_SYNONYMS.get(name, ())) + list(extra.get(name, ()))
            if not words:
                raise ValueError(
                    f"class {name!r} has no keyword list; give its synonyms in the SIG settings' keywords.extra")
            for w in words:
                w = " ".join(w.lower().replace("_", " ").split())
                forms.update((w, plural(w)))
        return cls(objects, tuple(sorted(forms, key=lambda f: (-len(f), f))))

    @classmethod
    def for_dataset(cls, name: str, extra: Mapping[str, Sequence[str]] | None = None) -> KeywordVocabulary:
        """The object classes of a dataset's class table (``mfnet``, ``msrs``, ``pst900``, ``fmb``)."""
        key = name.lower()
        if key not in CLASS_TABLES:
            raise ValueError(f"no class table named {name!r}; known: {', '.join(CLASS_TABLES)} "
                             "(or list the classes in the SIG settings' keywords.classes)")
        return cls.for_classes(CLASS_TABLES[key].classes, extra)

    def pattern(self) -> re.Pattern[str]:
        """One alternation of all forms, longest first, on word boundaries, case-insensitive."""
        alternatives = "|".join(r"\s+".join(re.escape(part) for part in f.split(" ")) for f in self.forms)
        return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE)


def remove_keywords(caption: str, vocabulary: KeywordVocabulary) -> RemovalResult:
    """T̂: ``caption`` with every occurrence of every keyword form removed, spaces collapsed.

    >>> v = KeywordVocabulary.for_dataset("mfnet")
    >>> remove_keywords("two men walking past parked cars", v).query
    'two walking past parked'
    """
    pattern = vocabulary.pattern()
    removed = tuple(m.group(0) for m in pattern.finditer(caption))
    query = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(pattern.sub(" ", caption).split())) if removed else caption
    return RemovalResult(caption, query, removed)
