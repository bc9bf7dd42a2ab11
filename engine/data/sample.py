"""The built-in sample corpus: SYNTHETIC English-German pairs, generated here, never downloaded.

A small bilingual lexicon and a grammar written in this file produce pairs such as

    When the old dog sleeps, the children play in the garden.
    Wenn der alte Hund schläft, spielen die Kinder im Garten.

The sentences are regular enough for a small Transformer to learn in a few CPU minutes, and real
enough to need what translation needs:

- German: articles by gender, number and case (nominative, accusative, dative); weak, mixed and
  strong adjective endings (der alte Hund, ein alter Hund, zwei alte Hunde, mit alten Hunden);
  weak masculine nouns (den Jungen); dative plural -n; present-tense verbs by person and number
  with stem changes (liest, fährt); separable verbs (ruft ... an, weil er ... anruft); modal verbs
  with the infinitive at the end; verbs that take the dative (hilft der Frau); prepositions that
  govern case, with contractions (im, zum, ins); verb-second order with inversion after a fronted
  adverb or clause; verb-final subordinate and relative clauses; kein/nicht negation.
- English: a/an, irregular plurals, third-person -s, do-support in questions and negation,
  phrasal verbs (picks up the child, picks him up).

One English sentence always has one German translation and the other way round (no "their"
that would collide with "her", no "you" for ihr/Sie), so the corpus is consistent in both
directions. ``generate_pairs`` is deterministic: same seed, same pairs.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, NamedTuple

from engine.data.corpus import Corpus, needs_swap, swapped

if TYPE_CHECKING:
    from engine.config import DataConfig

DEFAULT_SIZES = (6000, 300, 300)  # train, valid, test when a size is 0
MIN_WORDS, MAX_WORDS = 4, 20  # English words per sentence, punctuation aside

# --- lexicon -------------------------------------------------------------------------------
# Noun tags: p person, a animal, t portable thing, x text to read, w something written,
# s something heard, o can be opened, c dish/container, v vehicle, f countable food,
# m food (mass), d drink (mass), l place, r room to tidy, u something to be under,
# n a surface to be on, k a landmark to stand next to / behind / in front of.

_NOUNS = """
man men Mann Männer m p
woman women Frau Frauen f p
child children Kind Kinder n p
boy boys Junge/Jungen Jungen m p
girl girls Mädchen Mädchen n p
teacher teachers Lehrer Lehrer m p
doctor doctors Arzt Ärzte m p
student students Student/Studenten Studenten m p
friend friends Freund Freunde m p
neighbour neighbours Nachbar/Nachbarn Nachbarn m p
farmer farmers Bauer/Bauern Bauern m p
baker bakers Bäcker Bäcker m p
king kings König Könige m p
queen queens Königin Königinnen f p
mother mothers Mutter Mütter f p
father fathers Vater Väter m p
sister sisters Schwester Schwestern f p
brother brothers Bruder Brüder m p
baby babies Baby Babys n p
tourist tourists Tourist/Touristen Touristen m p
uncle uncles Onkel Onkel m p
aunt aunts Tante Tanten f p
dog dogs Hund Hunde m a
cat cats Katze Katzen f a
horse horses Pferd Pferde n a
bird birds Vogel Vögel m a
mouse mice Maus Mäuse f a
cow cows Kuh Kühe f a
rabbit rabbits Kaninchen Kaninchen n a
elephant elephants Elefant/Elefanten Elefanten m a
duck ducks Ente Enten f a
bear bears Bär/Bären Bären m a
lion lions Löwe/Löwen Löwen m a
book books Buch Bücher n tx
letter letters Brief Briefe m txwo
newspaper newspapers Zeitung Zeitungen f tx
story stories Geschichte Geschichten f xws
song songs Lied Lieder n ws
picture pictures Bild Bilder n t
ball balls Ball Bälle m t
key keys Schlüssel Schlüssel m t
cup cups Tasse Tassen f tc
glass glasses Glas Gläser n tc
bag bags Tasche Taschen f toc
box boxes Kiste Kisten f toc
bottle bottles Flasche Flaschen f toc
umbrella umbrellas Regenschirm Regenschirme m to
hat hats Hut Hüte m t
shoe shoes Schuh Schuhe m t
phone phones Telefon Telefone n t
clock clocks Uhr Uhren f t
lamp lamps Lampe Lampen f t
present presents Geschenk Geschenke n to
car cars Auto Autos n vuk
bicycle bicycles Fahrrad Fahrräder n v
table tables Tisch Tische m unk
chair chairs Stuhl Stühle m un
bed beds Bett Betten n un
door doors Tür Türen f ok
window windows Fenster Fenster n ok
tree trees Baum Bäume m uk
apple apples Apfel Äpfel m f
egg eggs Ei Eier n f
orange oranges Orange Orangen f f
cake cakes Kuchen Kuchen m f
banana bananas Banane Bananen f f
sausage sausages Wurst Würste f f
carrot carrots Karotte Karotten f f
water - Wasser - n d
milk - Milch - f d
coffee - Kaffee - m d
tea - Tee - m d
juice - Saft - m d
soup - Suppe - f m
bread - Brot - n m
cheese - Käse - m m
rice - Reis - m m
garden gardens Garten Gärten m l
kitchen kitchens Küche Küchen f lr
house houses Haus Häuser n lk
school schools Schule Schulen f lk
park parks Park Parks m l
city cities Stadt Städte f l
village villages Dorf Dörfer n l
forest forests Wald Wälder m l
station stations Bahnhof Bahnhöfe m lk
market markets Markt Märkte m l
beach beaches Strand Strände m l
river rivers Fluss Flüsse m l
library libraries Bibliothek Bibliotheken f lk
office offices Büro Büros n lr
room rooms Zimmer Zimmer n lr
shop shops Laden Läden m lk
hospital hospitals Krankenhaus Krankenhäuser n lk
restaurant restaurants Restaurant Restaurants n lk
hotel hotels Hotel Hotels n lk
bridge bridges Brücke Brücken f lu
street streets Straße Straßen f l
church churches Kirche Kirchen f lk
museum museums Museum Museen n lk
zoo zoos Zoo Zoos m l
"""

# place: English "at" word, German locative preposition (+dative), direction ("to the ..."),
# origin ("from the ..."). Direction with zu takes the dative, with in/auf/an the accusative.
_PLACES = """
garden     in in  in:acc  aus
kitchen    in in  in:acc  aus
house      in in  in:acc  aus
school     at in  zu:dat  aus
park       in in  in:acc  aus
city       in in  in:acc  aus
village    in in  in:acc  aus
forest     in in  in:acc  aus
station    at an  zu:dat  von
market     at auf auf:acc von
beach      on an  an:acc  von
river      by an  zu:dat  von
library    in in  in:acc  aus
office     in in  in:acc  aus
room       in in  in:acc  aus
shop       in in  in:acc  aus
hospital   in in  in:acc  aus
restaurant in in  in:acc  aus
hotel      in in  in:acc  aus
bridge     on auf zu:dat  von
street     on auf auf:acc von
church     in in  in:acc  aus
museum     in in  in:acc  aus
zoo        at in  in:acc  aus
"""

# English, German predicative[/attributive stem], the noun tags it goes with
_ADJECTIVES = """
old alt patvlkuonx
young jung pa
tall groß p
big groß atvlkuo
small klein patvlkuo
new neu tvlkuonx
tired müde pa
hungry hungrig pa
happy glücklich p
friendly freundlich pa
clever klug pa
sick krank pa
rich reich p
poor arm p
red rot tvo
blue blau tvo
green grün tvo
yellow gelb tvo
black schwarz atv
white weiß atv
brown braun atv
heavy schwer tc
expensive teuer/teur tv
cheap billig tv
beautiful schön tvlkws
interesting interessant xl
long lang xws
short kurz xws
fresh frisch fmd
cold kalt md
hot heiß md
sweet süß fd
quiet ruhig l
dark dunkel/dunkl lr
empty leer c
full voll c
clean sauber tvr
dirty schmutzig tvr
"""

# English verb (a second word is a particle or preposition: "look at"; "pick+up" marks an English
# particle that goes after a pronoun object), German infinitive with "-" after a separable
# prefix and ":du,er" for stem changes, frame, subject tags, object tags (@ names one noun),
# prepositional phrases it takes (L at a place, S under/on/next to..., W with, F for).
# Frames: i intransitive, g motion, a accusative object, d dative object,
# 2 dative person + accusative thing.
_VERBS = """
sleep     | schlafen:schläfst,schläft  | i | pa |              | LS
play      | spielen                    | i | pa |              | LW
laugh     | lachen                     | i | p  |              | L
sing      | singen                     | i | p  |              | LW
work      | arbeiten                   | i | p  |              | LW
wait      | warten                     | i | pa |              | LS
dance     | tanzen                     | i | p  |              | LW
swim      | schwimmen                  | i | pa |              | W
cry       | weinen                     | i | p  |              | L
sit       | sitzen                     | i | pa |              | LS
stand     | stehen                     | i | pa |              | LS
get up    | auf-stehen                 | i | p  |              |
go        | gehen                      | g | pa |              | W
drive     | fahren:fährst,fährt        | g | p  |              | W
run       | rennen                     | g | pa |              | W
come      | kommen                     | g | pa |              | W
read      | lesen:liest,liest          | a | p  | x            | LW
write     | schreiben                  | a | p  | w            | LF
see       | sehen:siehst,sieht         | a | pa | patvfkln     | L
hear      | hören                      | a | pa | pas          | L
buy       | kaufen                     | a | p  | tvfmd        | LF
sell      | verkaufen                  | a | p  | tvfmd        | L
eat       | essen:isst,isst            | a | pa | fm           | LW
drink     | trinken                    | a | pa | d            | LW
carry     | tragen:trägst,trägt        | a | p  | t            | L
find      | finden                     | a | pa | tpa          | LS
look for  | suchen                     | a | pa | tpa          | L
look at   | an-schauen                 | a | p  | tpavlk       | L
call      | an-rufen                   | a | p  | p            |
pick+up   | ab-holen                   | a | p  | p            | L
invite    | ein-laden:lädst,lädt       | a | p  | p            |
tidy+up   | auf-räumen                 | a | p  | r            |
visit     | besuchen                   | a | p  | pl           |
like      | mögen                      | a | pa | patvfmdl     |
love      | lieben                     | a | p  | pa           |
need      | brauchen                   | a | pa | tvfmd        |
open      | öffnen                     | a | p  | o            |
close     | schließen                  | a | p  | o            |
wash      | waschen:wäschst,wäscht     | a | p  | vac @baby    |
draw      | zeichnen                   | a | p  | patvlk       |
paint     | malen                      | a | p  | patvlk       |
feed      | füttern                    | a | p  | a            | L
catch     | fangen:fängst,fängt        | a | pa | a @ball      |
know      | kennen                     | a | pa | pl           |
ask       | fragen                     | a | p  | p            |
forget    | vergessen:vergisst,vergisst | a | p | t            | L
take      | nehmen:nimmst,nimmt        | a | p  | tf           |
hold      | halten:hältst,hält         | a | p  | t @baby      |
meet      | treffen:triffst,trifft     | a | p  | p            | L
cook      | kochen                     | a | p  | @soup @rice @egg @carrot | LF
build     | bauen                      | a | p  | @house @bridge @table @chair | F
have      | haben                      | a | pa | tva          |
help      | helfen:hilfst,hilft        | d | pa | pa           | L
follow    | folgen                     | d | pa | pa           |
thank     | danken                     | d | p  | p            |
answer    | antworten                  | d | p  | p            |
belong to | gehören                    | d | tva | p           |
give      | geben:gibst,gibt           | 2 | p  | tf           |
show      | zeigen                     | 2 | p  | tvl          |
bring     | bringen                    | 2 | p  | tfd          |
send      | schicken                   | 2 | p  | @letter @present @picture @book |
read      | vor-lesen:liest,liest      | 2 | p  | x            |
buy       | kaufen                     | 2 | p  | tf           |
"""

# verbs that take a clause: English, German, English and German conjunction
_CLAUSE_VERBS = """
say   sagen   that dass
think denken  that dass
know  wissen  that dass
hope  hoffen  that dass
ask   fragen  whether ob
"""

_IRREGULAR_DE = {  # ich, du, er/sie/es, wir, ihr, sie
    "sein": ("bin", "bist", "ist", "sind", "seid", "sind"),
    "haben": ("habe", "hast", "hat", "haben", "habt", "haben"),
    "mögen": ("mag", "magst", "mag", "mögen", "mögt", "mögen"),
    "wissen": ("weiß", "weißt", "weiß", "wissen", "wisst", "wissen"),
    "füttern": ("füttere", "fütterst", "füttert", "füttern", "füttert", "füttern"),
}
_IRREGULAR_EN_3SG = {"have": "has", "go": "goes", "do": "does"}

# German person index: 0 ich, 1 du, 2 er/sie/es (and every singular noun), 3 wir, 4 ihr,
# 5 sie (and every plural noun). Subject pronouns: English, nominative, accusative, dative.
_PRONOUNS = (
    ("I", "ich", "me", "mich", "mir", 0),
    ("you", "du", "you", "dich", "dir", 1),
    ("he", "er", "him", "ihn", "ihm", 2),
    ("she", "sie", "her", "sie", "ihr", 2),
    ("we", "wir", "us", "uns", "uns", 3),
    ("they", "sie", "them", None, "ihnen", 5),  # no accusative "them": "sie" is already "her"
)
_POSSESSIVES = (("my", "mein"), ("your", "dein"), ("his", "sein"), ("her", "ihr"), ("our", "unser"))
_NUMBERS = (("two", "zwei"), ("three", "drei"), ("four", "vier"), ("five", "fünf"),
            ("six", "sechs"), ("ten", "zehn"))

# modal: English 3sg, English base, English negation, German forms, usable in questions/negation
_MODALS = (
    ("can", "can", "cannot", ("kann", "kannst", "kann", "können", "könnt", "können"), True),
    ("wants to", "want to", "not want to",
     ("will", "willst", "will", "wollen", "wollt", "wollen"), True),
    ("must", "must", None, ("muss", "musst", "muss", "müssen", "müsst", "müssen"), False),
    ("should", "should", "should not",
     ("soll", "sollst", "soll", "sollen", "sollt", "sollen"), True),
)
_MODALS_ASKABLE = tuple(m for m in _MODALS if m[4])  # not "must not" (= darf nicht)
_TIMES = (("today", "heute"), ("tomorrow", "morgen"), ("now", "jetzt"),
          ("in the morning", "am Morgen"), ("in the evening", "am Abend"),
          ("every day", "jeden Tag"), ("on Monday", "am Montag"), ("on Friday", "am Freitag"),
          ("on Sunday", "am Sonntag"))
_FREQUENCIES = (("often", "oft"), ("always", "immer"), ("sometimes", "manchmal"),
                ("never", "nie"), ("usually", "meistens"), ("rarely", "selten"))
_SPATIAL = (("under", "unter", "u"), ("on", "auf", "n"), ("next to", "neben", "kpa"),
            ("behind", "hinter", "k"), ("in front of", "vor", "k"))
_NO_MODAL = ("need", "like", "love", "belong")  # not "wants to need"
_SUBORDINATORS = (("because", "weil"), ("although", "obwohl"), ("while", "während"),
                  ("when", "wenn"), ("before", "bevor"))

# German declension: (case, gender or "pl") -> article / ending
_CASES = ("nom", "acc", "dat")
_DEF = {"nom": {"m": "der", "f": "die", "n": "das", "pl": "die"},
        "acc": {"m": "den", "f": "die", "n": "das", "pl": "die"},
        "dat": {"m": "dem", "f": "der", "n": "dem", "pl": "den"}}
_DER_END = {"nom": {"m": "er", "f": "e", "n": "es", "pl": "e"},  # dieser, viele, einige
            "acc": {"m": "en", "f": "e", "n": "es", "pl": "e"},
            "dat": {"m": "em", "f": "er", "n": "em", "pl": "en"}}
_EIN_END = {"nom": {"m": "", "f": "e", "n": "", "pl": "e"},  # ein, kein, mein, ...
            "acc": {"m": "en", "f": "e", "n": "", "pl": "e"},
            "dat": {"m": "em", "f": "er", "n": "em", "pl": "en"}}
_WEAK = {"nom": {"m": "e", "f": "e", "n": "e", "pl": "en"},  # after der, dieser
         "acc": {"m": "en", "f": "e", "n": "e", "pl": "en"},
         "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"}}
_MIXED = {"nom": {"m": "er", "f": "e", "n": "es", "pl": "en"},  # after ein, kein, mein
          "acc": {"m": "en", "f": "e", "n": "es", "pl": "en"},
          "dat": {"m": "en", "f": "en", "n": "en", "pl": "en"}}
_STRONG = _DER_END  # no article: kaltes Wasser, zwei alte Hunde, mit alten Hunden
_CONTRACTIONS = {("in", "dem"): "im", ("in", "das"): "ins", ("an", "dem"): "am",
                 ("an", "das"): "ans", ("zu", "dem"): "zum", ("zu", "der"): "zur",
                 ("von", "dem"): "vom", ("bei", "dem"): "beim"}
_REL_PRONOUN = {"nom": _DEF["nom"], "acc": _DEF["acc"],
                "dat": {"m": "dem", "f": "der", "n": "dem", "pl": "denen"}}


class Noun(NamedTuple):
    en: str
    en_pl: str  # "" for a mass noun
    de: str
    de_oblique: str  # singular accusative/dative (den Jungen); de for most nouns
    de_pl: str
    gender: str
    tags: str
    adjectives: tuple  # the adjectives that go with it


class Adjective(NamedTuple):
    en: str
    de: str  # predicative: der Kaffee ist teuer
    de_stem: str  # attributive: ein teurer Kaffee
    tags: str


class Verb(NamedTuple):
    en: str  # base form of the first English word
    en_tail: str  # particle or preposition ("at" in "look at")
    en_tail_moves: bool  # particle goes after a pronoun object (picks him up)
    de_forms: tuple  # present tense, six persons
    de_infinitive: str  # with its prefix: anrufen
    de_prefix: str  # separable prefix: "an", or ""
    frame: str
    subjects: tuple  # nouns that can be its subject
    person_subject: bool  # pronouns can be its subject
    objects: tuple  # nouns that can be its (accusative / dative / thing) object
    pps: str


class Place(NamedTuple):
    en_at: str
    de_at: str
    de_to: str
    to_case: str
    de_from: str


class Clause:
    """One clause in both languages, realised later in the order its sentence needs."""

    __slots__ = ("subj_en", "subj_de", "person", "verb", "modal", "neg", "objs_en", "obj_pronoun",
                 "pron_de", "objs_de", "pps", "time", "freq", "pred", "gap")

    def __init__(self, subj_en: str, subj_de: str, person: int, verb: Verb | None) -> None:
        self.subj_en, self.subj_de, self.person, self.verb = subj_en, subj_de, person, verb
        self.modal = None
        self.neg = ""  # "" | "nicht" | "kein" (kein is already in an object)
        self.objs_en: list[str] = []
        self.obj_pronoun = False
        self.pron_de: list[str] = []  # pronoun objects open the German middle field
        self.objs_de: list[str] = []
        self.pps: list[tuple[str, str]] = []
        self.time: tuple[str, str] | None = None
        self.freq: tuple[str, str] | None = None
        self.pred: tuple[str, str] | None = None  # a "be" clause: adjective or place
        self.gap = ""  # the kind of a questioned/relativised object: "person" | "thing"


def _conjugate(infinitive: str, du: str = "", er: str = "") -> tuple:
    if infinitive in _IRREGULAR_DE:
        return _IRREGULAR_DE[infinitive]
    stem = infinitive[:-2] if infinitive.endswith("en") else infinitive[:-1]
    # e before -st/-t: arbeitest, findet, öffnet, zeichnet (but kommt, wohnt)
    e = "e" if (stem[-1] in "dt" or stem.endswith("chn")
                or (stem[-1] in "mn" and stem[-2] not in "aeiouäöülrhmn")) else ""
    du_regular = stem + ("t" if stem[-1] in "sßzx" else e + "st")
    er_regular = stem + e + "t"
    return (stem + "e", du or du_regular, er or er_regular, infinitive, er_regular, infinitive)


def _en_3sg(base: str) -> str:
    if base in _IRREGULAR_EN_3SG:
        return _IRREGULAR_EN_3SG[base]
    if base.endswith(("s", "sh", "ch", "x", "z", "o")):
        return base + "es"
    if base.endswith("y") and base[-2] not in "aeiou":
        return base[:-1] + "ies"
    return base + "s"


def _build_lexicon():
    adjectives = []
    for line in _ADJECTIVES.strip().splitlines():
        en, de, tags = line.split()
        predicative, _, stem = de.partition("/")
        if not stem:  # müde -> der müde Mann, ein müder Mann
            stem = predicative[:-1] if predicative.endswith("e") else predicative
        adjectives.append(Adjective(en, predicative, stem, tags))
    nouns = []
    for line in _NOUNS.strip().splitlines():
        en, en_pl, de, de_pl, gender, tags = line.split()
        de, _, oblique = de.partition("/")
        fitting = tuple(a for a in adjectives if any(t in a.tags for t in tags))
        nouns.append(Noun(en, "" if en_pl == "-" else en_pl, de, oblique or de,
                          "" if de_pl == "-" else de_pl, gender, tags, fitting))
    by_name = {n.en: n for n in nouns}
    places = {}
    for line in _PLACES.strip().splitlines():
        name, en_at, de_at, to, de_from = line.split()
        de_to, _, to_case = to.partition(":")
        places[name] = Place(en_at, de_at, de_to, to_case, de_from)

    def matching(spec: str) -> tuple:
        names = {w[1:] for w in spec.split() if w.startswith("@")}
        tags = "".join(w for w in spec.split() if not w.startswith("@"))
        return tuple(n for n in nouns if n.en in names or any(t in tags for t in n.tags))

    verbs = []
    for line in _VERBS.strip().splitlines():
        en, de, frame, subjects, objects, pps = (part.strip() for part in line.split("|"))
        en_tail_moves = "+" in en
        en_head, _, en_tail = en.replace("+", " ").partition(" ")
        de, _, changes = de.partition(":")
        prefix, _, infinitive = de.rpartition("-")
        forms = _conjugate(infinitive, *changes.split(",")) if changes else _conjugate(infinitive)
        verbs.append(Verb(en_head, en_tail, en_tail_moves, forms, prefix + infinitive, prefix,
                          frame, matching(subjects), "p" in subjects, matching(objects), pps))
    clause_verbs = []
    for line in _CLAUSE_VERBS.strip().splitlines():
        en, de, conj_en, conj_de = line.split()
        clause_verbs.append((en, _conjugate(de), conj_en, conj_de))
    return nouns, by_name, places, adjectives, verbs, clause_verbs


NOUNS, NOUN_BY_NAME, PLACES, ADJECTIVES, VERBS, CLAUSE_VERBS = _build_lexicon()
_PLACE_NOUNS = tuple(n for n in NOUNS if "l" in n.tags)
_PERSONS = tuple(n for n in NOUNS if "p" in n.tags)
_ANIMATE = tuple(n for n in NOUNS if "p" in n.tags or "a" in n.tags)
_WITH_ADJECTIVES = tuple(n for n in NOUNS if n.adjectives)
_LOCATABLE = tuple(n for n in NOUNS if any(t in "patv" for t in n.tags))
_THROUGH = tuple(NOUN_BY_NAME[n] for n in ("park", "forest", "city", "village", "garden"))
_SPATIAL_NOUNS = tuple(tuple(n for n in NOUNS if any(t in tags for t in n.tags))
                       for _, _, tags in _SPATIAL)
_VERBS_BY_FRAME = {f: tuple(v for v in VERBS if v.frame == f) for f in "igad2"}
_OBJECT_VERBS = tuple(v for v in VERBS if v.frame in "ad2")
_SIMPLE_OBJECT_VERBS = tuple(v for v in VERBS if v.frame in "ad")
_VERBS_AS_SUBJECT = {n: tuple(v for v in VERBS if n in v.subjects) for n in NOUNS}
_VERBS_AS_OBJECT = {n: tuple(v for v in VERBS if v.frame in "ad" and n in v.objects)
                    for n in NOUNS}
_RELATIVE_HEADS = tuple(n for n in _WITH_ADJECTIVES
                        if _VERBS_AS_SUBJECT[n] or _VERBS_AS_OBJECT[n])
_PERSON_VERBS = tuple(v for v in VERBS if v.person_subject)


# --- noun phrases --------------------------------------------------------------------------


class NounPhrase(NamedTuple):
    noun: Noun
    det: str  # the | a | bare | poss | this | num | many | some
    index: int  # which possessive or number
    adjective: Adjective | None
    plural: bool


def _noun_phrase(rng: random.Random, noun: Noun, *, adjective_p: float = 0.25,
                 plural_p: float = 0.3, plain: bool = False) -> NounPhrase:
    """A random determiner, number and adjective for ``noun``; ``plain``: no numbers."""
    r = rng.random()
    if not noun.en_pl:  # mass noun: the milk, milk, his milk, this milk
        plural = False
        det = "the" if r < 0.4 else "bare" if r < 0.85 else "poss" if r < 0.95 else "this"
    elif rng.random() < plural_p:
        plural = True
        det = ("the" if r < 0.4 else "bare" if r < 0.6 else "poss" if r < 0.75 else
               "this" if r < 0.8 or plain else "num" if r < 0.95 else "many" if r < 0.98 else
               "some")
    else:
        plural = False
        det = "the" if r < 0.5 else "a" if r < 0.75 else "poss" if r < 0.9 else "this"
    index = rng.randrange(len(_NUMBERS) if det == "num" else len(_POSSESSIVES))
    adjective = (rng.choice(noun.adjectives)
                 if noun.adjectives and rng.random() < adjective_p else None)
    return NounPhrase(noun, det, index, adjective, plural)


def _en_np(np: NounPhrase) -> str:
    noun = np.noun.en_pl if np.plural else np.noun.en
    words = [np.adjective.en, noun] if np.adjective else [noun]
    det = np.det
    if det == "the":
        words.insert(0, "the")
    elif det == "a":
        words.insert(0, "an" if words[0][0] in "aeiou" else "a")
    elif det == "poss":
        words.insert(0, _POSSESSIVES[np.index][0])
    elif det == "this":
        words.insert(0, "these" if np.plural else "this")
    elif det == "num":
        words.insert(0, _NUMBERS[np.index][0])
    elif det in ("many", "some"):
        words.insert(0, det)
    return " ".join(words)


def _is_indefinite(np: NounPhrase) -> bool:
    """ein Buch, Bücher, Milch: what negation turns into kein."""
    return np.det == "a" or np.det == "bare"


def _de_np(np: NounPhrase, case: str, negated: bool = False) -> str:
    noun, det = np.noun, np.det
    key = "pl" if np.plural else noun.gender
    if det == "the":
        article, endings = _DEF[case][key], _WEAK
    elif det == "this":
        article, endings = "dies" + _DER_END[case][key], _WEAK
    elif det == "poss":
        article, endings = _POSSESSIVES[np.index][1] + _EIN_END[case][key], _MIXED
    elif negated:  # ein/bare -> kein
        article, endings = "kein" + _EIN_END[case][key], _MIXED
    elif det == "a":
        article, endings = "ein" + _EIN_END[case][key], _MIXED
    elif det == "num":
        article, endings = _NUMBERS[np.index][1], _STRONG
    elif det == "many":
        article, endings = "viel" + _DER_END[case][key], _STRONG
    elif det == "some":
        article, endings = "einig" + _DER_END[case][key], _STRONG
    else:  # bare plural or mass noun
        article, endings = "", _STRONG
    if np.plural:
        word = noun.de_pl
        if case == "dat" and word[-1] not in "ns":
            word += "n"  # dative plural: den Kindern
    else:
        word = noun.de if case == "nom" else noun.de_oblique
    parts = [article] if article else []
    if np.adjective:
        parts.append(np.adjective.de_stem + endings[case][key])
    parts.append(word)
    return " ".join(parts)


def _de_pp(prep: str, np: NounPhrase, case: str) -> str:
    phrase = _de_np(np, case)
    if np.det == "the":
        article, _, rest = phrase.partition(" ")
        short = _CONTRACTIONS.get((prep, article))
        if short:
            return f"{short} {rest}"
    return f"{prep} {phrase}"


def _place_np(rng: random.Random, noun: Noun) -> NounPhrase:
    r = rng.random()
    det = "the" if r < 0.7 else "a" if r < 0.85 else "poss"
    adjective = (rng.choice(noun.adjectives)
                 if noun.adjectives and rng.random() < 0.2 else None)
    return NounPhrase(noun, det, rng.randrange(len(_POSSESSIVES)), adjective, False)


# --- prepositional phrases -----------------------------------------------------------------


def _at_place(rng: random.Random) -> tuple[str, str]:
    noun = rng.choice(_PLACE_NOUNS)
    np, place = _place_np(rng, noun), PLACES[noun.en]
    return f"{place.en_at} {_en_np(np)}", _de_pp(place.de_at, np, "dat")


def _spatial(rng: random.Random, exclude: Noun | None = None) -> tuple[str, str]:
    i = rng.randrange(len(_SPATIAL))
    en, de, _ = _SPATIAL[i]
    noun = rng.choice(_SPATIAL_NOUNS[i])
    if noun is exclude:  # not "the table is under the table"
        others = [n for n in _SPATIAL_NOUNS[i] if n is not exclude]
        noun = others[0]
    np = _place_np(rng, noun) if "l" in noun.tags or i < 2 else _noun_phrase(rng, noun, plain=True)
    return f"{en} {_en_np(np)}", _de_pp(de, np, "dat")


def _with(rng: random.Random, prep: str = "with") -> tuple[str, str]:
    np = _noun_phrase(rng, rng.choice(_ANIMATE), plain=prep != "with")
    if prep == "with":
        return f"with {_en_np(np)}", _de_pp("mit", np, "dat")
    return f"for {_en_np(np)}", _de_pp("für", np, "acc")


def _direction(rng: random.Random, verb: Verb) -> tuple[str, str]:
    r = rng.random()
    if r < 0.15:
        return "home", "nach Hause"
    if verb.en == "come" and r < 0.4:
        noun = rng.choice(_PLACE_NOUNS)
        np = _place_np(rng, noun)
        return f"from {_en_np(np)}", _de_pp(PLACES[noun.en].de_from, np, "dat")
    if verb.en != "come" and r < 0.3:
        np = _place_np(rng, rng.choice(_THROUGH))
        return f"through {_en_np(np)}", _de_pp("durch", np, "acc")
    noun = rng.choice(_PLACE_NOUNS)
    np, place = _place_np(rng, noun), PLACES[noun.en]
    return f"to {_en_np(np)}", _de_pp(place.de_to, np, place.to_case)


def _pps(rng: random.Random, kinds: str, count: int) -> list[tuple[str, str]]:
    chosen = rng.sample(kinds, min(count, len(kinds)))
    if "L" in chosen and "S" in chosen:  # one place is enough
        chosen.remove("S")
    chosen.sort(key="FWSL".index)  # English and German: with/for before where
    out = []
    for kind in chosen:
        if kind == "L":
            out.append(_at_place(rng))
        elif kind == "S":
            out.append(_spatial(rng))
        else:
            out.append(_with(rng, "with" if kind == "W" else "for"))
    return out


# --- clauses -------------------------------------------------------------------------------


def _subject(rng: random.Random, candidates: tuple, pronoun_ok: bool, pronoun_p: float = 0.25,
             adjective_p: float = 0.25) -> tuple[str, str, int, Noun | None]:
    if pronoun_ok and rng.random() < pronoun_p:
        en, de, _, _, _, person = rng.choice(_PRONOUNS)
        return en, de, person, None
    noun = rng.choice(candidates)
    np = _noun_phrase(rng, noun, adjective_p=adjective_p)
    return _en_np(np), _de_np(np, "nom"), 5 if np.plural else 2, noun


def _object(rng: random.Random, clause: Clause, candidates: tuple, case: str,
            subject: Noun | None, negate: bool) -> bool:
    """Adds one object; True when negation went into it as kein."""
    noun = rng.choice(candidates)
    if noun is subject and len(candidates) > 1:
        noun = rng.choice(candidates)
    if "p" in noun.tags and rng.random() < 0.2:
        _, _, en, acc, dat, person = rng.choice(_PRONOUNS)
        pronoun = acc if case == "acc" else dat
        # not "I see me" (that would be reflexive: ich sehe mich)
        if pronoun and not (person == clause.person and person in (0, 1, 3)):
            clause.objs_en.append(en)
            clause.pron_de.append(pronoun)
            clause.obj_pronoun = True
            return False
    np = _noun_phrase(rng, noun, plain=negate)
    kein = negate and _is_indefinite(np)
    clause.objs_en.append(_en_np(np))
    clause.objs_de.append(_de_np(np, case, negated=kein))
    return kein


def _verb_clause(rng: random.Random, verbs: tuple = VERBS, *, subject=None,
                 modal_p: float = 0.0, neg_p: float = 0.0, time_p: float = 0.0,
                 freq_p: float = 0.0, pp_p: float = 0.4, gap: str = "",
                 question: bool = False) -> Clause:
    """A clause with a verb. ``subject``: (en, de, person, noun) already chosen; ``gap``: leave
    out the object (questions, relative clauses; for a dative+accusative verb the accusative)
    and say in ``clause.gap`` whether it would have been a person, an animal or a thing."""
    verb = rng.choice(verbs)
    subj_en, subj_de, person, subj_noun = subject or _subject(rng, verb.subjects,
                                                             verb.person_subject)
    clause = Clause(subj_en, subj_de, person, verb)
    if verb.en not in _NO_MODAL and rng.random() < modal_p:
        clause.modal = rng.choice(_MODALS_ASKABLE if question or neg_p else _MODALS)
    negate = rng.random() < neg_p
    frame = verb.frame
    kein = False
    if frame == "2":
        _object(rng, clause, _PERSONS, "dat", subj_noun, False)
        if gap:
            clause.gap = "thing"
        else:
            kein = _object(rng, clause, verb.objects, "acc", subj_noun, negate)
    elif frame in "ad":
        if gap:
            tags = rng.choice(verb.objects).tags
            clause.gap = "person" if "p" in tags else "animal" if "a" in tags else "thing"
        else:
            kein = _object(rng, clause, verb.objects, "acc" if frame == "a" else "dat",
                           subj_noun, negate)
    if negate:
        clause.neg = "kein" if kein else "nicht"
    if frame == "g":
        clause.pps.append(_direction(rng, verb))
        if "W" in verb.pps and rng.random() < pp_p / 3:
            clause.pps.insert(0, _with(rng))
    elif verb.pps and rng.random() < pp_p:
        clause.pps = _pps(rng, verb.pps, 1 if rng.random() < 0.8 else 2)
    if rng.random() < time_p:
        clause.time = rng.choice(_TIMES[:5] if negate else _TIMES)
    elif not negate and not clause.modal and rng.random() < freq_p:
        clause.freq = rng.choice(_FREQUENCIES)
    return clause


def _be_clause(rng: random.Random, *, neg_p: float = 0.0, time_p: float = 0.0,
               freq_p: float = 0.0, subject=None, location: bool | None = None) -> Clause:
    """"X is tired", "X is in the garden", "X is at home"."""
    if location is None:
        location = rng.random() < 0.35
    if subject is None:
        noun = rng.choice(_LOCATABLE if location else _WITH_ADJECTIVES)
        # "the old dog is hungry", but not "the black dog is brown"
        subject = _subject(rng, (noun,), "p" in noun.tags, 0.2, 0.25 if location else 0.0)
    subj_en, subj_de, person, noun = subject
    # a time or frequency for places and states of the living, not for "the book is red"
    when_ok = location or noun is None or "p" in noun.tags or "a" in noun.tags
    clause = Clause(subj_en, subj_de, person, None)
    if location:
        r = rng.random()
        clause.pred = (("at home", "zu Hause") if r < 0.15 and (noun is None or "p" in noun.tags)
                       else _at_place(rng) if r < 0.55 else _spatial(rng, exclude=noun))
    else:
        if noun is None:
            noun = NOUN_BY_NAME["man"]  # a pronoun: a person's adjectives
        adjective = rng.choice(noun.adjectives)
        if adjective.en in subj_en.split():  # not "the cold coffee is cold"
            adjective = noun.adjectives[noun.adjectives.index(adjective) - 1]
        clause.pred = (adjective.en, adjective.de)
    if rng.random() < neg_p:
        clause.neg = "nicht"
    if when_ok and rng.random() < time_p:
        clause.time = rng.choice(_TIMES)
    elif when_ok and not clause.neg and rng.random() < freq_p:
        clause.freq = rng.choice(_FREQUENCIES)
    return clause


# --- realisation ---------------------------------------------------------------------------

_BE_EN = ("am", "are", "is", "are", "are", "are")
_DE_SEIN = _IRREGULAR_DE["sein"]


def _en_rest(c: Clause) -> list[str]:
    """Everything after the English verb: objects, particle, places, time."""
    verb = c.verb
    words = []
    if verb is None:
        words.append(c.pred[0])
    else:
        tail_after = verb.en_tail_moves and c.obj_pronoun
        if verb.en_tail and not tail_after:
            words.append(verb.en_tail)
        words.extend(c.objs_en)
        if tail_after:
            words.append(verb.en_tail)
    words.extend(en for en, _ in c.pps)
    if c.time:
        words.append(c.time[0])
    return words


def _en_statement(c: Clause) -> list[str]:
    third = c.person == 2
    if c.verb is None:
        words = [c.subj_en, _BE_EN[c.person]]
        if c.neg:
            words.append("not")
        if c.freq:
            words.append(c.freq[0])
        return words + _en_rest(c)
    base = c.verb.en
    if c.modal:
        en3, en_base, en_neg, _, _ = c.modal
        if c.neg:
            modal = en_neg if en3 != "wants to" else ("does " if third else "do ") + en_neg
        else:
            modal = en3 if third else en_base
        words = [c.subj_en, modal, base]
    elif c.neg:
        words = [c.subj_en, "does" if third else "do", "not", base]
    else:
        words = [c.subj_en]
        if c.freq:
            words.append(c.freq[0])
        words.append(_en_3sg(base) if third else base)
    return words + _en_rest(c)


def _en_question(c: Clause, wh: str = "") -> list[str]:
    """Does the man read the book? / What does the man read? (``wh``: the question word)."""
    third = c.person == 2
    words = [wh] if wh else []
    if c.verb is None:
        return words + [_BE_EN[c.person], c.subj_en] + _en_rest(c)
    if c.modal and c.modal[0] != "wants to":
        words += [c.modal[1], c.subj_en, c.verb.en]
    else:
        words += ["does" if third else "do", c.subj_en]
        if c.modal:
            words += ["want", "to"]
        words.append(c.verb.en)
    return words + _en_rest(c)


def _de_finite(c: Clause) -> str:
    if c.verb is None:
        return _DE_SEIN[c.person]
    if c.modal:
        return c.modal[3][c.person]
    return c.verb.de_forms[c.person]


def _de_middle(c: Clause) -> list[str]:
    """The German middle field: pronouns, time, frequency, objects, nicht, places, predicate."""
    words = list(c.pron_de)
    if c.time:
        words.append(c.time[1])
    if c.freq:
        words.append(c.freq[1])
    words.extend(c.objs_de)
    if c.neg == "nicht":
        words.append("nicht")
    words.extend(de for _, de in c.pps)
    if c.pred:
        words.append(c.pred[1])
    return words


def _de_right(c: Clause) -> list[str]:
    """The right bracket of a main clause: the infinitive after a modal, or the prefix."""
    if c.verb is None:
        return []
    if c.modal:
        return [c.verb.de_infinitive]
    return [c.verb.de_prefix] if c.verb.de_prefix else []


def _de_main(c: Clause) -> list[str]:
    """Verb second, subject first: Der Mann ruft die Frau heute an."""
    return [c.subj_de, _de_finite(c)] + _de_middle(c) + _de_right(c)


def _de_inverted(c: Clause) -> list[str]:
    """After a fronted part, or in a question: ... ruft der Mann die Frau an."""
    return [_de_finite(c), c.subj_de] + _de_middle(c) + _de_right(c)


def _de_final(c: Clause) -> list[str]:
    """Verb last (subordinate and relative clauses): der Mann die Frau heute anruft."""
    if c.verb is None:
        cluster = [_DE_SEIN[c.person]]
    elif c.modal:
        cluster = [c.verb.de_infinitive, c.modal[3][c.person]]
    else:
        cluster = [c.verb.de_prefix + c.verb.de_forms[c.person]]
    return [c.subj_de] + _de_middle(c) + cluster


# --- sentences -----------------------------------------------------------------------------


def _statement(rng: random.Random) -> tuple[list[str], list[str], str]:
    if rng.random() < 0.2:
        c = _be_clause(rng, neg_p=0.2, time_p=0.1, freq_p=0.15)
    else:
        c = _verb_clause(rng, modal_p=0.15, neg_p=0.15, time_p=0.2, freq_p=0.12)
    return _en_statement(c), _de_main(c), "."


def _fronted(rng: random.Random) -> tuple[list[str], list[str], str]:
    """Today the man reads a book. / Heute liest der Mann ein Buch."""
    if rng.random() < 0.2:
        c = _be_clause(rng, neg_p=0.15, time_p=1.0)
    else:
        c = _verb_clause(rng, modal_p=0.15, neg_p=0.15, time_p=1.0)
    if c.time is None:  # "the book is red" takes no time
        return _fronted(rng)
    time, c.time = c.time, None
    return [time[0]] + _en_statement(c), [time[1]] + _de_inverted(c), "."


def _yes_no(rng: random.Random) -> tuple[list[str], list[str], str]:
    if rng.random() < 0.25:
        c = _be_clause(rng, time_p=0.1)
    else:
        c = _verb_clause(rng, modal_p=0.2, time_p=0.15, question=True)
    return _en_question(c), _de_inverted(c), "?"


def _wh_question(rng: random.Random) -> tuple[list[str], list[str], str]:
    r = rng.random()
    if r < 0.25:  # Who reads the book? / Wer liest das Buch?
        c = _verb_clause(rng, _PERSON_VERBS, subject=("who", "wer", 2, None), modal_p=0.15,
                         question=True)
        return _en_statement(c), _de_main(c), "?"
    if r < 0.6:  # What does the man read? / Wen sieht der Mann? / Wem hilft der Mann?
        c = _verb_clause(rng, _OBJECT_VERBS, modal_p=0.15, gap="object", question=True,
                         pp_p=0.2)
        if c.verb.frame == "d":
            return _en_question(c, "who"), ["wem"] + _de_inverted(c), "?"
        if c.gap == "person":
            return _en_question(c, "who"), ["wen"] + _de_inverted(c), "?"
        if c.gap == "animal":  # "what" or "which animal": neither is one clear answer
            return _wh_question(rng)
        return _en_question(c, "what"), ["was"] + _de_inverted(c), "?"
    if r < 0.8:  # Where does the dog sleep? / Wohin geht der Mann? / Wo ist der Hund?
        kind = rng.random()
        if kind < 0.3:
            c = _be_clause(rng, location=True)
            c.pred = None
            return ["where"] + [_BE_EN[c.person], c.subj_en], ["wo", _DE_SEIN[c.person],
                                                               c.subj_de], "?"
        motion = kind < 0.6
        c = _verb_clause(rng, _VERBS_BY_FRAME["g" if motion else "i"], modal_p=0.15,
                         question=True, pp_p=0.0)
        c.pps = []
        if c.verb.en == "come":  # Where does the man come from? / Woher kommt der Mann?
            return _en_question(c, "where") + ["from"], ["woher"] + _de_inverted(c), "?"
        return _en_question(c, "where"), ["wohin" if motion else "wo"] + _de_inverted(c), "?"
    # When does the man get up? / Why does the child cry?
    en, de = rng.choice((("when", "wann"), ("why", "warum")))
    c = _verb_clause(rng, modal_p=0.15, question=True, pp_p=0.3)
    return _en_question(c, en), [de] + _de_inverted(c), "?"


def _simple_clause(rng: random.Random, *, neg_p: float = 0.15) -> Clause:
    if rng.random() < 0.25:
        return _be_clause(rng, neg_p=neg_p, time_p=0.05)
    return _verb_clause(rng, modal_p=0.12, neg_p=neg_p, time_p=0.1, freq_p=0.08, pp_p=0.3)


def _subordinate(rng: random.Random) -> tuple[list[str], list[str], str]:
    """The cat plays when the dog sleeps. / When the dog sleeps, the cat plays."""
    en_conj, de_conj = rng.choice(_SUBORDINATORS)
    main, sub = _simple_clause(rng), _simple_clause(rng)
    if en_conj != "because" and rng.random() < 0.4:
        en = [en_conj] + _en_statement(sub)
        en[-1] += ","
        de = [de_conj] + _de_final(sub)
        de[-1] += ","
        return en + _en_statement(main), de + _de_inverted(main), "."
    de = _de_main(main)
    de[-1] += ","
    return (_en_statement(main) + [en_conj] + _en_statement(sub),
            de + [de_conj] + _de_final(sub), ".")


def _reported(rng: random.Random) -> tuple[list[str], list[str], str]:
    """The woman says that the man reads a book. / Die Frau sagt, dass der Mann ..."""
    en_verb, forms, en_conj, de_conj = rng.choice(CLAUSE_VERBS)
    subj_en, subj_de, person, _ = _subject(rng, _PERSONS, True, 0.3)
    sub = _simple_clause(rng)
    en_verb = _en_3sg(en_verb) if person == 2 else en_verb
    return ([subj_en, en_verb, en_conj] + _en_statement(sub),
            [subj_de, forms[person] + ",", de_conj] + _de_final(sub), ".")


def _coordinated(rng: random.Random) -> tuple[list[str], list[str], str]:
    """The man reads and the woman sleeps. / The man reads, but the woman sleeps."""
    first, second = _simple_clause(rng, neg_p=0.1), _simple_clause(rng, neg_p=0.1)
    en, de = _en_statement(first), _de_main(first)
    if rng.random() < 0.5:
        return en + ["and"] + _en_statement(second), de + ["und"] + _de_main(second), "."
    en[-1] += ","
    de[-1] += ","
    return en + ["but"] + _en_statement(second), de + ["aber"] + _de_main(second), "."


def _relative_clause(rng: random.Random, head: NounPhrase,
                     avoid: Verb | None = None) -> tuple[list[str], list[str]]:
    """who reads a book / , der ein Buch liest (no comma after: the caller adds it).
    ``avoid``: the main clause's verb (not "they tidy up an office that she tidies up")."""
    noun = head.noun
    person = 5 if head.plural else 2
    key = "pl" if head.plural else noun.gender
    en_rel = "who" if "p" in noun.tags else "that"
    as_subject = tuple(v for v in _VERBS_AS_SUBJECT[noun] if v is not avoid)
    as_object = tuple(v for v in _VERBS_AS_OBJECT[noun] if v is not avoid)
    if not as_subject and not as_object:
        as_subject, as_object = _VERBS_AS_SUBJECT[noun], _VERBS_AS_OBJECT[noun]
    if as_subject and (not as_object or rng.random() < 0.6):
        # the head is the subject: der Mann, der ein Buch liest
        c = _verb_clause(rng, as_subject, pp_p=0.3,
                         subject=(en_rel, _REL_PRONOUN["nom"][key], person, noun))
        return _en_statement(c), [","] + _de_final(c)
    # the head is the object: der Mann, den die Frau sieht / dem die Frau hilft
    c = _verb_clause(rng, as_object, gap="object", pp_p=0.3)
    case = "acc" if c.verb.frame == "a" else "dat"
    return [en_rel] + _en_statement(c), [",", _REL_PRONOUN[case][key]] + _de_final(c)


def _relative(rng: random.Random) -> tuple[list[str], list[str], str]:
    if rng.random() < 0.5:
        # I want to call the woman who helps the child.
        # Ich will die Frau anrufen, die dem Kind hilft. (German moves the clause to the end)
        c = _verb_clause(rng, _SIMPLE_OBJECT_VERBS, modal_p=0.15, gap="object", pp_p=0.0)
        head = _noun_phrase(rng, rng.choice(c.verb.objects), plain=True, adjective_p=0.15)
        if head.det == "bare" and not head.plural:
            head = head._replace(det="the")
        c.objs_en = [_en_np(head)]
        c.objs_de = [_de_np(head, "acc" if c.verb.frame == "a" else "dat")]
        en_rel, de_rel = _relative_clause(rng, head, avoid=c.verb)
        de = _de_main(c)
        de[-1] += de_rel[0]
        return _en_statement(c) + en_rel, de + de_rel[1:], "."
    # The man who reads the book is tired. / Der Mann, der das Buch liest, ist müde.
    noun = rng.choice(_RELATIVE_HEADS)
    head = _noun_phrase(rng, noun, plain=True, adjective_p=0.1)
    if head.det == "bare" and not head.plural:
        head = head._replace(det="the")
    en_rel, de_rel = _relative_clause(rng, head)
    adjective = rng.choice(noun.adjectives)
    if adjective is head.adjective:  # not "the old man ... is old"
        head = head._replace(adjective=None)
    person = 5 if head.plural else 2
    de = [_de_np(head, "nom")]
    de[-1] += de_rel[0]
    de += de_rel[1:]
    de[-1] += ","
    return ([_en_np(head)] + en_rel + [_BE_EN[person], adjective.en],
            de + [_DE_SEIN[person], adjective.de], ".")


_TEMPLATES = ((_statement, 0.34), (_fronted, 0.08), (_yes_no, 0.08), (_wh_question, 0.08),
              (_subordinate, 0.16), (_reported, 0.08), (_coordinated, 0.08), (_relative, 0.10))
_TEMPLATE_FUNCTIONS = tuple(t for t, _ in _TEMPLATES)
_TEMPLATE_WEIGHTS = tuple(w for _, w in _TEMPLATES)


def _finish(words: list[str], end: str) -> str:
    text = " ".join(words).replace(" ,", ",")
    return text[0].upper() + text[1:] + end


def generate_pair(rng: random.Random) -> tuple[str, str]:
    """One (English, German) pair of MIN_WORDS to MAX_WORDS English words."""
    while True:
        template = rng.choices(_TEMPLATE_FUNCTIONS, _TEMPLATE_WEIGHTS)[0]
        en, de, end = template(rng)
        words = sum(len(w.split()) for w in en)
        if MIN_WORDS <= words <= MAX_WORDS:
            return _finish(en, end), _finish(de, end)


def generate_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` distinct (English, German) pairs; the same seed gives the same pairs.

    No English sentence and no German sentence occurs twice, so splits cut from the list share
    no sentence in either direction.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    rng = random.Random(seed)
    seen_en: set[str] = set()
    seen_de: set[str] = set()
    pairs = []
    attempts = 0
    while len(pairs) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise ValueError(f"cannot generate {n:,} distinct pairs (got {len(pairs):,})")
        en, de = generate_pair(rng)
        if en in seen_en or de in seen_de:
            continue
        seen_en.add(en)
        seen_de.add(de)
        pairs.append((en, de))
    return pairs


def sample_corpus(train_size: int = 0, valid_size: int = 0, test_size: int = 0,
                  seed: int = 1234) -> Corpus:
    """English->German splits with no sentence in two splits; a size of 0 means the default.

    Test and validation pairs are drawn first, so a larger training set keeps the same
    validation and test sets.
    """
    sizes = [size or default for size, default in zip((train_size, valid_size, test_size),
                                                      DEFAULT_SIZES)]
    train_n, valid_n, test_n = sizes
    pairs = generate_pairs(test_n + valid_n + train_n, seed)
    return Corpus(train=pairs[test_n + valid_n:], valid=pairs[test_n:test_n + valid_n],
                  test=pairs[:test_n], src_lang="en", tgt_lang="de")


def load_sample(cfg: "DataConfig") -> Corpus:
    """The sample corpus in the direction ``cfg`` asks for (generated en-de, swapped for de-en)."""
    swap = needs_swap(cfg)
    corpus = sample_corpus(cfg.train_size, cfg.valid_size, cfg.test_size, cfg.seed)
    if swap:
        corpus = Corpus(swapped(corpus.train), swapped(corpus.valid), swapped(corpus.test),
                        src_lang="de", tgt_lang="en")
    return corpus
