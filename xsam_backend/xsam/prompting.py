"""X-SAM prompts: the official question/answer templates, the Phi-3 chat template and tokenisation.

A prompt is built in three steps, each reproducing the official X-SAM code (``AAAI26_Archive``):

1. a *question* per task from one of the official templates (``genseg_question``,
   ``refseg_question``, ...), with phrases wrapped as ``<p>phrase</p>`` and visual prompts as
   ``<p><region></p>``;
2. one or more :class:`Turn` (question plus, in tensor mode, a fixed answer holding ``<SEG>``);
3. :meth:`PromptEncoder.encode`: the Phi-3 chat template, a BOS before the first turn (the
   official training and evaluation path; the official demo omits it), per-chunk tokenisation
   around the ``<image>`` (-200) and ``<region>`` (-300) placeholders, then the ``<p>``/``<SEG>``
   bookkeeping (``cond_ids``, ``seg_ids``).

All ids index *token positions before splicing*: the model later replaces the single ``-200``
with the SigLIP and SAM image tokens (729 + 1024 for the released model) and every ``-300``
with one region embedding.

Template choice. The official code draws a question and an answer with ``random.choice`` on every
call, evaluation included. The builders here take the templates explicitly; the defaults are the
first official question of each list and the answer :data:`DEFAULT_ANSWER`,
``"Sure, it is <SEG>."``. That answer is one of the official answers of genseg, ovseg, refseg,
reaseg, vgdseg and intseg (index 3 of each list), reads naturally before the ``<SEG>`` state,
and is the answer of the official-implementation parity cases, so the answer the decoder is
conditioned on has been checked end to end.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from xsam_backend.errors import PromptError

IMAGE_TOKEN = "<image>"
REGION_TOKEN = "<region>"
SEG_TOKEN = "<SEG>"
PSTART_TOKEN = "<p>"
PEND_TOKEN = "</p>"
IMAGE_TOKEN_INDEX = -200
REGION_TOKEN_INDEX = -300
IGNORE_INDEX = -100
# Added to the Phi-3 tokenizer in this order by the official model (ids 32011, 32012, 32013).
SPECIAL_TOKENS: tuple[str, ...] = (SEG_TOKEN, PSTART_TOKEN, PEND_TOKEN)
_PLACEHOLDERS = {IMAGE_TOKEN: IMAGE_TOKEN_INDEX, REGION_TOKEN: REGION_TOKEN_INDEX}
_PLACEHOLDER_SPLIT = re.compile(f"({re.escape(IMAGE_TOKEN)}|{re.escape(REGION_TOKEN)})")

XSamTask = Literal["genseg", "ovseg", "refseg", "reaseg", "gcgseg", "vgdseg", "intseg"]


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template in xtuner's layout (``xtuner.utils.PROMPT_TEMPLATE``)."""

    system: str
    instruction: str
    suffix: str
    suffix_as_eos: bool
    sep: str
    stop_words: tuple[str, ...]


PHI3_CHAT = ChatTemplate(
    system="<|system|>\n{system}<|end|>\n",
    instruction="<|user|>\n{input}<|end|>\n<|assistant|>\n",
    suffix="<|end|>",
    suffix_as_eos=True,
    sep="\n",
    stop_words=("<|end|>",),
)

# Official template lists (dataset/map_fns/dataset_map_fns/*_map_fn.py), in the official order.
GENSEG_QUESTIONS: tuple[str, ...] = (
    "Can you segment the image based on the following categories: {categories}? Please output the segmentation masks.",
    "Can you generate segmentation masks for this image based on the specified categories: {categories}? Please generate the segmentation masks.",
    "Can you provide segmentation masks for this image based on these categories: {categories}? Please provide the segmentation masks.",
    "Could you create segmentation masks for this image according to the specified categories: {categories}? Please create the segmentation masks.",
    "Could you output segmentation masks for this image that highlight the following categories: {categories}? Please output the segmentation masks.",
    "Could you provide segmentation masks for this image according to the specified categories: {categories}? Please respond with the segmentation masks.",
)
GENSEG_ANSWERS: tuple[str, ...] = (
    "<SEG>.",
    "It is <SEG>.",
    "Sure, <SEG>.",
    "Sure, it is <SEG>.",
    "Sure, the segmentation result is <SEG>.",
)
REFSEG_QUESTIONS: tuple[str, ...] = (
    "Please identify and segment the {phrase} in this image.",
    "Please segment {phrase} in this image.",
    "What is {phrase} in this image? Please output the corresponding segmentation mask.",
    "Can you segment {phrase} in this image? Please generate the segmentation mask.",
    "Could you provide a segmentation mask for the {phrase} in this image? Please provide the segmentation mask.",
    "Where is the {phrase} in this picture? Please output the segmentation masks.",
    "Can you highlight the {phrase} in this image with a segmentation mask? Please output the segmentation mask.",
    "Could you provide a segmentation mask for the {phrase} in this image? Please respond with the segmentation mask.",
    "Where is the {phrase} in this picture? Please output the corresponding segmentation mask.",
    "Can you highlight the {phrase} in this image with a segmentation mask? Please output the segmentation mask.",
)
REFSEG_ANSWERS: tuple[str, ...] = (
    "<SEG>.",
    "It is <SEG>.",
    "Sure, <SEG>.",
    "Sure, it is <SEG>.",
    "Sure, the segmentation mask is <SEG>.",
)
REASEG_SHORT_QUESTIONS: tuple[str, ...] = (
    "Can you segment {sent} in this image? Please output the segmentation mask.",
    "Can you give the segmentation mask for {sent} in this image? Please respond with the segmentation mask.",
    "Can you highlight {sent} and output the corresponding segmentation mask? Please provide the segmentation mask.",
    "What is {sent} in this image? Please output the corresponding segmentation mask.",
    "What is {sent} in this image? Please generate a segmentation mask for this image.",
)
REASEG_LONG_QUESTIONS: tuple[str, ...] = (
    "{sent} Please output the corresponding segmentation mask.",
    "{sent} Please generate a segmentation mask for this image.",
    "{sent} Please extract the segmentation mask.",
    "{sent} Please return the segmentation predictions as masks.",
    "{sent} Please segment the image.",
)
REASEG_ANSWERS: tuple[str, ...] = REFSEG_ANSWERS
GCGSEG_QUESTIONS: tuple[str, ...] = (
    "Could you please give me a brief description of the image? Please respond with interleaved segmentation masks for the corresponding parts of the answer.",
    "Can you provide a brief description of the this image? Please output interleaved segmentation masks for the corresponding phrases.",
    "Please briefly describe the contents of the image. Please respond with interleaved segmentation masks for the corresponding parts of the answer.",
    "Could you give a brief explanation of what can be found within this picture? Please output interleaved segmentation masks for the corresponding phrases.",
    "Could you give me an brief explanation of this picture? Please respond with interleaved segmentation masks for the corresponding phrases.",
    "Could you provide me with a briefly analysis of this photo? Please output interleaved segmentation masks for the corresponding parts of the answer.",
)
GCGSEG_ANSWERS: tuple[str, ...] = (
    "<SEG>.",
    "And <SEG>.",
    "The segmentation mask is <SEG>.",
    "And the segmentation mask is <SEG>.",
)
VGDSEG_QUESTIONS: tuple[str, ...] = (
    "Can you segment the image based on the following regions: {regions}? Please output the corresponding segmentation mask.",
    "Can you generate segmentation masks for this image based on the specified regions: {regions}? Please generate the segmentation masks.",
    "Can you provide segmentation masks for this image based on these regions: {regions}? Please provide the segmentation masks.",
    "Could you create segmentation masks for this image according to the specified regions: {regions}? Please create the segmentation masks.",
    "Could you output segmentation masks for this image that highlight the following regions: {regions}? Please output the segmentation masks.",
    "Could you provide segmentation masks for this image according to the specified regions: {regions}? Please respond with the segmentation masks.",
)
VGDSEG_ANSWERS: tuple[str, ...] = GENSEG_ANSWERS

DEFAULT_ANSWER = "Sure, it is <SEG>."


def phrase(text: str) -> str:
    """``text`` wrapped as an X-SAM phrase, ``<p>text</p>``."""
    return f"{PSTART_TOKEN}{text}{PEND_TOKEN}"


def clean_category_name(name: str) -> str:
    """A category name as the official genseg prompt writes it.

    COCO-style suffixes ``-merged``, ``-other``, ``-stuff`` are dropped, the remaining ``-`` become
    spaces, and the result is lower-cased: ``"sky-other-merged"`` -> ``"sky"``.
    """
    name = name.replace("-merged", "").replace("-other", "").replace("-stuff", "")
    return name.replace("-", " ").lower()


def _check_template(template: str, field: str) -> None:
    if "{" + field + "}" not in template:
        raise PromptError(f"a question template here needs a {{{field}}} field; got {template!r}")


def genseg_question(categories: Sequence[str], template: str = GENSEG_QUESTIONS[0]) -> str:
    """The generic / open-vocabulary question listing ``categories`` in the given order.

    Class index ``k`` of the model output is the ``k``-th category. Names are cleaned with
    :func:`clean_category_name`, wrapped as phrases and joined with ``", "``.
    """
    if not categories:
        raise PromptError("a generic segmentation prompt needs at least one class name")
    _check_template(template, "categories")
    tagged = ", ".join(phrase(clean_category_name(c)) for c in categories)
    return template.format(categories=tagged)


def refseg_question(expression: str, template: str = REFSEG_QUESTIONS[0]) -> str:
    """The referring question for one expression (stripped and lower-cased, as the official code)."""
    if not expression.strip():
        raise PromptError("a referring prompt needs a non-empty phrase")
    _check_template(template, "phrase")
    return template.format(phrase=phrase(expression.strip().lower()))


def reaseg_question(query: str, *, is_sentence: bool = True, template: str | None = None) -> str:
    """The reasoning question for ``query`` (stripped, case kept).

    ``is_sentence`` picks the official list the default template comes from: the long list
    (``"{sent} Please output the corresponding segmentation mask."``) for full questions, as the
    official demo always does, or the short list for a noun phrase.
    """
    if not query.strip():
        raise PromptError("a reasoning prompt needs a non-empty question")
    if template is None:
        template = REASEG_LONG_QUESTIONS[0] if is_sentence else REASEG_SHORT_QUESTIONS[0]
    _check_template(template, "sent")
    return template.format(sent=phrase(query.strip()))


def vgdseg_question(num_regions: int, template: str = VGDSEG_QUESTIONS[0]) -> str:
    """The visual-grounded (and interactive) question with ``num_regions`` ``<p><region></p>``.

    Region ``k`` is class ``k`` of the model output; interactive segmentation uses one region.
    """
    if num_regions < 1:
        raise PromptError(f"a visual prompt needs at least one region; got {num_regions}")
    _check_template(template, "regions")
    return template.format(regions=", ".join([phrase(REGION_TOKEN)] * num_regions))


def gcgseg_question(template: str = GCGSEG_QUESTIONS[0]) -> str:
    """The grounded-conversation question (no field: the model writes the caption and phrases)."""
    return template


@dataclass(frozen=True)
class Turn:
    """One user turn and, in tensor mode, the fixed assistant answer.

    ``answer=None`` encodes the prompt only (predict mode: the model generates the answer).
    """

    question: str
    answer: str | None = DEFAULT_ANSWER


def task_turns(
    task: XSamTask,
    *,
    categories: Sequence[str] = (),
    expressions: Sequence[str] = (),
    num_regions: int = 0,
    is_sentence: bool = True,
    question_template: str | None = None,
    answer_template: str | None = DEFAULT_ANSWER,
) -> list[Turn]:
    """The conversation for one task, with explicit templates.

    * ``genseg``/``ovseg``: ``categories``; ``refseg``: one turn per entry of ``expressions``;
      ``reaseg``: ``expressions[0]`` is the question (``is_sentence`` as :func:`reaseg_question`);
      ``vgdseg``/``intseg``: ``num_regions`` (``intseg`` needs exactly one); ``gcgseg``: nothing.
    * ``question_template``: ``None`` takes the first official question of the task's list.
    * ``answer_template``: the fixed answer of every turn; ``None`` gives prompt-only turns
      (predict mode, always the case for the generated ``gcgseg`` answer).
    """
    if task in ("genseg", "ovseg"):
        q = genseg_question(categories, question_template or GENSEG_QUESTIONS[0])
        return [Turn(q, answer_template)]
    if task == "refseg":
        if not expressions:
            raise PromptError("a referring prompt needs at least one phrase")
        template = question_template or REFSEG_QUESTIONS[0]
        return [Turn(refseg_question(e, template), answer_template) for e in expressions]
    if task == "reaseg":
        if len(expressions) != 1:
            raise PromptError(f"a reasoning prompt takes one question; got {len(expressions)}")
        q = reaseg_question(expressions[0], is_sentence=is_sentence, template=question_template)
        return [Turn(q, answer_template)]
    if task in ("vgdseg", "intseg"):
        if task == "intseg" and num_regions != 1:
            raise PromptError(f"interactive segmentation takes exactly one region; got {num_regions}")
        return [Turn(vgdseg_question(num_regions, question_template or VGDSEG_QUESTIONS[0]), answer_template)]
    if task == "gcgseg":
        return [Turn(gcgseg_question(question_template or GCGSEG_QUESTIONS[0]), None)]
    raise PromptError(f"unknown X-SAM task {task!r}")


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the encoder uses (use the *fast* Phi-3 tokenizer)."""

    bos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True, eq=False)
class EncodedPrompt:
    """Token ids of one prompt, before the model splices in image and region embeddings.

    All arrays are ``int64`` of shape ``(T,)``:

    * ``input_ids``: vocabulary ids, ``-200`` for ``<image>``, ``-300`` for each ``<region>``;
    * ``labels``: ``-100`` on BOS, prompt, placeholders and separators, the ids of the answer;
    * ``cond_ids``: ``k`` on the inclusive span ``<p> ... </p>`` of the ``k``-th phrase, ``-1``
      elsewhere (all ``-1`` when there is no phrase; the official code then leaves them unset);
    * ``seg_ids``: ``k`` at the ``k``-th ``<SEG>``, ``-1`` elsewhere.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    cond_ids: np.ndarray
    seg_ids: np.ndarray

    @property
    def num_phrases(self) -> int:
        """Number of ``<p>...</p>`` spans, i.e. of classes before the background class."""
        return int(self.cond_ids.max()) + 1 if self.cond_ids.size else 0

    @property
    def num_seg_tokens(self) -> int:
        """Number of ``<SEG>`` tokens (tensor mode needs exactly one for a mask, refseg one per turn)."""
        return int((self.seg_ids >= 0).sum())

    @property
    def num_regions(self) -> int:
        """Number of ``<region>`` placeholders (visual prompts)."""
        return int((self.input_ids == REGION_TOKEN_INDEX).sum())

    @property
    def image_position(self) -> int | None:
        """Index of the ``<image>`` placeholder, or ``None``.

        Everything up to and including it is the same for every prompt of an image with the same
        BOS setting: the prefix whose LLM key/value cache can be reused.
        """
        hits = np.flatnonzero(self.input_ids == IMAGE_TOKEN_INDEX)
        return int(hits[0]) if hits.size else None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class SpecialTokenIds:
    """Vocabulary ids the bookkeeping needs, read from the tokenizer (never hard-coded)."""

    bos: int | None
    seg: int
    p_start: int
    p_end: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> SpecialTokenIds:
        """Read ``<SEG>``, ``<p>``, ``</p>`` as the official model does (first id of each encoding).

        Raises ``ValueError`` when the tokenizer lacks them (they must be added tokens).
        """
        ids = []
        for token in SPECIAL_TOKENS:
            encoded = tokenizer.encode(token, add_special_tokens=False)
            if len(encoded) != 1:
                raise ValueError(
                    f"the tokenizer has no single token for {token!r} (got {encoded}); X-SAM adds "
                    f"{list(SPECIAL_TOKENS)} with add_tokens(..., special_tokens=True)"
                )
            ids.append(encoded[0])
        return cls(bos=tokenizer.bos_token_id, seg=ids[0], p_start=ids[1], p_end=ids[2])


class PromptEncoder:
    """Turns conversations into :class:`EncodedPrompt` exactly as the official ``encode_fn``.

    ``add_bos``: a BOS before the first turn (the official training and evaluation path; the
    official demo passes none). With Phi-3 (``SUFFIX_AS_EOS``) later turns never get one.
    ``max_length``: truncate ``input_ids`` to this many ids, as the official datasets do with
    ``4096 - image tokens`` (2319 for the released model); ``None`` keeps everything.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        template: ChatTemplate = PHI3_CHAT,
        *,
        add_bos: bool = True,
        max_length: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.add_bos = add_bos
        self.max_length = max_length
        self.ids = SpecialTokenIds.from_tokenizer(tokenizer)
        if add_bos and self.ids.bos is None:
            raise ValueError("add_bos=True but the tokenizer has no BOS token")

    def _text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    def _input_ids(self, text: str) -> list[int]:
        # Each chunk between placeholders is tokenised on its own: tokenising the joined string
        # gives different ids at the borders (SentencePiece prefixes every chunk with a space).
        ids: list[int] = []
        for chunk in _PLACEHOLDER_SPLIT.split(text):
            if chunk in _PLACEHOLDERS:
                ids.append(_PLACEHOLDERS[chunk])
            else:
                ids.extend(self._text_ids(chunk))
        return ids

    def encode(self, turns: Sequence[Turn]) -> EncodedPrompt:
        """Encode a conversation; the first turn carries the image.

        Per turn: ``instruction.format(input=...)`` where the first turn's input is
        ``("<image>\\n" + question).strip()``; in tensor mode (``answer`` set) the answer plus the
        template suffix ``<|end|>`` (with loss) and the separator ``"\\n"`` (without). A prompt-only
        turn (``answer=None``) must be the last one.
        """
        if not turns:
            raise PromptError("a prompt needs at least one turn")
        if any(t.answer is None for t in turns[:-1]):
            raise PromptError("only the last turn may leave its answer to the model")
        t = self.template
        input_ids: list[int] = []
        labels: list[int] = []
        needs_bos = self.add_bos
        for i, turn in enumerate(turns):
            if i == 0:
                user = (IMAGE_TOKEN + "\n" + turn.question.replace(IMAGE_TOKEN, "").strip()).strip()
            else:
                user = turn.question
            prompt_ids = self._input_ids(t.instruction.format(input=user, round=i + 1))
            if needs_bos:
                assert self.ids.bos is not None
                input_ids.append(self.ids.bos)
                labels.append(IGNORE_INDEX)
            input_ids += prompt_ids
            labels += [IGNORE_INDEX] * len(prompt_ids)
            if turn.answer is None:
                break
            answer_ids = self._text_ids(turn.answer + t.suffix)
            input_ids += answer_ids
            labels += answer_ids
            # SUFFIX_AS_EOS: the suffix closes the turn, no EOS and hence no BOS on the next turn.
            needs_bos = not t.suffix_as_eos
            sep_ids = self._text_ids(t.sep)
            input_ids += sep_ids
            labels += [IGNORE_INDEX] * len(sep_ids)
        if self.max_length is not None:
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        ids = np.asarray(input_ids, dtype=np.int64)
        return EncodedPrompt(
            input_ids=ids,
            labels=np.asarray(labels, dtype=np.int64),
            cond_ids=phrase_ids(ids, self.ids.p_start, self.ids.p_end),
            seg_ids=seg_token_ids(ids, self.ids.seg),
        )

    def encode_task(
        self,
        task: XSamTask,
        *,
        categories: Sequence[str] = (),
        expressions: Sequence[str] = (),
        num_regions: int = 0,
        is_sentence: bool = True,
        question_template: str | None = None,
        answer_template: str | None = DEFAULT_ANSWER,
    ) -> EncodedPrompt:
        """:func:`task_turns` then :meth:`encode`: the prompt of one task in one call."""
        return self.encode(
            task_turns(
                task,
                categories=categories,
                expressions=expressions,
                num_regions=num_regions,
                is_sentence=is_sentence,
                question_template=question_template,
                answer_template=answer_template,
            )
        )


def phrase_ids(input_ids: np.ndarray, p_start: int, p_end: int) -> np.ndarray:
    """``cond_ids`` for ``input_ids`` ``(T,)``: ``k`` on the ``k``-th ``<p> ... </p>`` (inclusive).

    The ``k``-th ``<p>`` is paired with the ``k``-th ``</p>``, as the official code; unpaired
    markers are ignored. Returns ``int64`` ``(T,)``, ``-1`` outside phrases.
    """
    out = np.full(input_ids.shape, -1, dtype=np.int64)
    starts = np.flatnonzero(input_ids == p_start)
    ends = np.flatnonzero(input_ids == p_end)
    for k, (s, e) in enumerate(zip(starts, ends)):
        out[s : e + 1] = k
    return out


def seg_token_ids(input_ids: np.ndarray, seg: int) -> np.ndarray:
    """``seg_ids`` for ``input_ids`` ``(T,)``: ``k`` at the ``k``-th ``<SEG>``, ``-1`` elsewhere."""
    out = np.full(input_ids.shape, -1, dtype=np.int64)
    hits = np.flatnonzero(input_ids == seg)
    out[hits] = np.arange(hits.size)
    return out


class TokenDecoder(Protocol):
    """The part of a tokenizer :func:`gcg_phrases` uses."""

    def decode(self, token_ids: Any) -> str: ...


def gcg_phrases(generated_ids: np.ndarray, tokenizer: TokenDecoder, p_start: int, p_end: int) -> list[str]:
    """The grounded phrases of a generated caption, as the official GCG evaluation reads them.

    ``generated_ids``: ``(n,)`` int ids of the generated tokens. The ``k``-th ``<p>`` pairs with
    the ``k``-th ``</p>``; the decoded text between them is stripped (``""`` when it holds a
    placeholder id).
    """
    ids = np.asarray(generated_ids)
    starts = np.flatnonzero(ids == p_start)
    ends = np.flatnonzero(ids == p_end)
    phrases = []
    for s, e in zip(starts, ends):
        inner = ids[s + 1 : e]
        phrases.append("" if (inner < 0).any() else tokenizer.decode(inner.tolist()).strip())
    return phrases


def gcg_caption(generated_text: str) -> str:
    """The caption of a generated GCG answer, as the official evaluation extracts it.

    Empty when the text has no ``<SEG>``. Otherwise the sentences (split at ``"."``) that hold
    no ``<SEG>`` are joined with ``". "``, every ``<...>`` tag is removed and whitespace is
    collapsed: ``"<p>A dog</p> sits on <p>the grass</p>. And the segmentation mask is <SEG>."``
    gives ``"A dog sits on the grass"``.
    """
    if SEG_TOKEN not in generated_text:
        return ""
    sentences = [part.strip() for part in generated_text.split(".") if SEG_TOKEN not in part]
    caption = re.sub(r"<.*?>", "", ". ".join(sentences))
    return " ".join(caption.split()).strip("'").strip()
