"""Deterministic sentences for the demo corpus: grammar from word lists, pseudo-words, numbers.

Three kinds of text, chosen by the language of the voice:

- English: template sentences ("the quiet farmer painted seven boxes near the station").
- German, French, Spanish, Italian, Dutch, Portuguese: words of that language in a
  random order with an occasional number (phonetically right, grammatically loose).
- Every other language: pseudo-words built from syllables the language's letter-to-sound
  rules can read, mixed with numbers, which espeak-ng speaks as real words of that
  language (so a Russian or Hindi voice says real Russian or Hindi numerals).
"""

from __future__ import annotations

import numpy as np


def _words(text: str) -> list[str]:
    """A word list written as one space-separated string."""
    return text.split()


_EN = {
    "det": _words("the a this that every one some my your our their another each"),
    "adj": _words(
        "quiet old young bright dark small large green yellow heavy light careful sudden "
        "gentle warm cold broken golden simple strange happy tired busy distant silver "
        "narrow wide early late northern famous honest clever"
    ),
    "noun": _words(
        "farmer teacher river window garden doctor letter station engine kitchen island "
        "market pilot painter village forest bridge mountain student sister brother "
        "neighbour captain baker question picture morning evening bottle journey "
        "machine harbour meadow carpet lantern signal record office winter summer"
    ),
    "verb": _words(
        "painted opened carried found moved cleaned watched followed built repaired "
        "visited noticed described borrowed counted delivered remembered closed "
        "collected measured ordered packed pulled pushed reached signed tested"
    ),
    "prep": _words("near behind under above beside across through after before inside"),
    "adv": _words("slowly quickly quietly carefully often rarely suddenly happily again"),
    "name": _words(
        "Anna Peter Maria James Laura David Sofia Daniel Emma Oliver Grace Henry Clara "
        "Victor Nadia Oscar"
    ),
    "num": _words("two three four five six seven eight nine ten twelve twenty"),
}

_EN_TEMPLATES = (
    "det adj noun verb det noun prep det noun",
    "name verb det adj noun adv",
    "det noun prep det noun verb num adj noun",
    "name and name verb det noun prep det adj noun",
    "adv det adj noun verb det noun",
    "det noun verb num noun prep det noun adv",
    "name verb that det noun was adj",
    "did det adj noun verb det noun prep det noun",
)

_WORDS = {
    "de": _words(
        "Haus Wasser Morgen Abend Garten Fenster Stadt Freund Arbeit Zeit Zug Brief "
        "schnell langsam heute gestern immer wieder gehen kommen sehen bringen machen "
        "schreiben lesen kleine große alte neue schöne und oder aber mit nach über "
        "Brücke Wald Himmel Straße Tisch Lampe Schule Kirche Hafen Wetter"
    ),
    "fr": _words(
        "maison eau matin soir jardin fenêtre ville ami travail temps train lettre "
        "vite lentement aujourd'hui hier toujours encore aller venir voir porter "
        "faire écrire lire petit grand vieux nouveau belle et ou mais avec après sur "
        "pont forêt ciel rue table lampe école église port marché"
    ),
    "es": _words(
        "casa agua mañana tarde jardín ventana ciudad amigo trabajo tiempo tren carta "
        "rápido despacio hoy ayer siempre otra vez ir venir ver llevar hacer escribir "
        "leer pequeño grande viejo nuevo bonita y o pero con después sobre puente "
        "bosque cielo calle mesa lámpara escuela iglesia puerto mercado"
    ),
    "it": _words(
        "casa acqua mattina sera giardino finestra città amico lavoro tempo treno "
        "lettera presto piano oggi ieri sempre ancora andare venire vedere portare fare "
        "scrivere leggere piccolo grande vecchio nuovo bella e o ma con dopo sopra "
        "ponte bosco cielo strada tavolo lampada scuola chiesa porto mercato"
    ),
    "nl": _words(
        "huis water morgen avond tuin raam stad vriend werk tijd trein brief snel "
        "langzaam vandaag gisteren altijd weer gaan komen zien brengen maken schrijven "
        "lezen klein groot oud nieuw mooi en of maar met na over brug bos hemel straat "
        "tafel lamp school kerk haven markt"
    ),
    "pt": _words(
        "casa água manhã tarde jardim janela cidade amigo trabalho tempo comboio carta "
        "rápido devagar hoje ontem sempre outra vez ir vir ver levar fazer escrever "
        "ler pequeno grande velho novo bonita e ou mas com depois sobre ponte floresta "
        "céu rua mesa lâmpada escola igreja porto mercado"
    ),
}

_ONSETS = _words("b d f g k l m n p r s t v z br dr kr pl st tr sk gl fr") + [""] * 4
_NUCLEI = _words("a e i o u a e i o u ai au ei")
_CODAS = [""] * 8 + _words("n m r s l k t")

LATIN_SCRIPT_LANGUAGES = _words(
    "sv da nb fi et hu pl cs sk sl hr ro ca eu gl tr id ms sw tn af cy ga is lt lv "
    "eo ia la mt sq haw mi"
)
"""Languages whose letter-to-sound rules read Latin-letter pseudo-words."""


def _language_family(language: str) -> str:
    base = language.split("-")[0].lower()
    if base == "en":
        return "en"
    if base in _WORDS:
        return base
    if base in LATIN_SCRIPT_LANGUAGES:
        return "pseudo"
    return "numbers"


def _number(rng: np.random.Generator) -> str:
    kind = rng.integers(0, 3)
    if kind == 0:
        return str(int(rng.integers(2, 100)))
    if kind == 1:
        return str(int(rng.integers(100, 1000)))
    return str(int(rng.integers(1000, 10000)))


def _pseudo_word(rng: np.random.Generator) -> str:
    syllables = int(rng.integers(1, 4))
    parts = []
    for _ in range(syllables):
        parts.append(
            _ONSETS[rng.integers(len(_ONSETS))]
            + _NUCLEI[rng.integers(len(_NUCLEI))]
            + _CODAS[rng.integers(len(_CODAS))]
        )
    return "".join(parts)


def _english_sentence(rng: np.random.Generator) -> list[str]:
    template = _EN_TEMPLATES[rng.integers(len(_EN_TEMPLATES))]
    words = []
    for slot in template.split():
        pool = _EN.get(slot)
        words.append(pool[rng.integers(len(pool))] if pool else slot)
    return words


def sentence(language: str, num_words: int, rng: np.random.Generator) -> str:
    """About `num_words` words of text suited to an espeak-ng voice of `language`.

    Deterministic in `rng`. Commas and full stops vary the prosody (pauses, falls).
    """
    if num_words < 1:
        raise ValueError(f"expected at least 1 word, got {num_words}")
    family = _language_family(language)
    words: list[str] = []
    while len(words) < num_words:
        if family == "en":
            words.extend(_english_sentence(rng))
        elif family == "numbers":
            words.append(_number(rng))
        else:
            for _ in range(int(rng.integers(3, 8))):
                if rng.random() < 0.15:
                    words.append(_number(rng))
                elif family == "pseudo":
                    words.append(_pseudo_word(rng))
                else:
                    pool = _WORDS[family]
                    words.append(pool[rng.integers(len(pool))])
        words[-1] += "," if rng.random() < 0.4 else "."
    words = words[:num_words]
    text = " ".join(words).rstrip(",.") + ("?" if rng.random() < 0.15 else ".")
    return text[0].upper() + text[1:]
