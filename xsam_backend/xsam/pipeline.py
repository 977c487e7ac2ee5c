"""X-SAM inference: an RGB image and a task in, post-processed masks out.

Two steps, so that the expensive one can be cached per image:

1. :meth:`XSamPipeline.prepare_image`: pre-processing, both encoders, projectors, connector,
   pixel decoder (:class:`~xsam_backend.xsam.modeling.ImageFeatures`), the decoder's image-only
   state (every layer's cross-attention keys and values,
   :class:`~xsam_backend.xsam.modeling.DecoderImageState`); then, lazily per prompt
   prefix, the Phi-3 key/value cache of ``[BOS] <|user|> <image>``, identical for every prompt of
   the image. Held in an :class:`ImageState`.
2. :meth:`XSamPipeline.run`: prompt building, the LLM over the prompt *suffix* only (the prefix
   comes from the cache, shared, never copied), ``<p>``/``<SEG>`` bookkeeping, one decoder pass,
   and the official post-processing of the task, which upsamples only the queries it needs from
   the decoder's stride-8 mask logits (never all ``Q`` masks to the padded frame).

Modes: ``"tensor"`` is the official evaluation path (prompt plus a fixed answer in one forward, no
generation); ``"predict"`` generates the answer greedily (grounded conversation, ``gcgseg``,
always; any other task on request) and reads ``<SEG>`` and the phrases from the generated tokens.

Decisions that follow the official code: a mask is produced only when the answer holds exactly
one ``<SEG>``, except ``refseg``/``reaseg``: one decoder pass per ``<SEG>``, the ``k``-th read with
phrase ``k`` (every pass with phrase 0 when there is one phrase; a ``<SEG>`` beyond the phrases is
dropped); in predict mode the classes come from the generated ``<p>…</p>`` spans when there are
any, else from the prompt's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache

from xsam_backend.xsam import processing_post as post
from xsam_backend.xsam.checkpoint import load_model
from xsam_backend.xsam.config import XSamConfig
from xsam_backend.xsam.modeling import (
    DecoderImageState,
    DecoderOutput,
    ImageFeatures,
    XSamModel,
    index_mean,
    upsample_mask_logits,
)
from xsam_backend.xsam.processing_pre import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SamPreprocessConfig,
    SiglipPreprocessConfig,
    preprocess_prompt_masks,
    preprocess_sam,
    preprocess_siglip,
    sample_prompt_points,
)
from xsam_backend.xsam.prompting import (
    DEFAULT_ANSWER,
    EncodedPrompt,
    PromptEncoder,
    XSamTask,
    gcg_caption,
    gcg_phrases,
    phrase_ids,
    seg_token_ids,
)

Mode = Literal["tensor", "predict"]
Trace = MutableMapping[str, torch.Tensor]
LogitsProcessor = Callable[[Sequence[int], torch.Tensor], torch.Tensor]

_ONE_SEG_PER_PASS: frozenset[str] = frozenset({"refseg", "reaseg"})


@dataclass(frozen=True)
class XSamRequest:
    """One task for one image.

    * ``categories``: class names (``genseg``/``ovseg``), cleaned as the official code does;
    * ``expressions``: the referring phrase (``refseg``) or the question (``reaseg``);
    * ``prompt_masks``: ``(N, H, W)`` bool visual prompts in the original frame (``vgdseg``: N ≥ 1,
      ``intseg``: N = 1);
    * ``segmentation``: which generic post-processing(s) to run, any of panoptic, instance,
      semantic; ``stuff_indices``: category indices fused in panoptic output;
    * ``mode``: ``"tensor"`` (fixed ``answer``) or ``"predict"`` (generation); ``gcgseg`` is
      always ``"predict"``;
    * ``add_bos``: a BOS before the prompt, as the official evaluation (the demo has none);
    * ``thresholds``: post-processing thresholds for this call (default: the pipeline's).
    """

    task: XSamTask
    categories: tuple[str, ...] = ()
    expressions: tuple[str, ...] = ()
    prompt_masks: np.ndarray | None = None
    segmentation: tuple[str, ...] = ("panoptic",)
    stuff_indices: tuple[int, ...] = ()
    mode: Mode = "tensor"
    add_bos: bool = True
    question_template: str | None = None
    answer: str = DEFAULT_ANSWER
    is_sentence: bool = True
    thresholds: post.PostprocessThresholds | None = None


@dataclass
class XSamOutput:
    """What :meth:`XSamPipeline.run` produced.

    ``class_logits``: ``(1, Q, C + 1)`` (last column background) and ``mask_logits``:
    ``(1, Q, S/8, S/8)`` fp32, the decoder's stride-8 logits of the padded SAM frame (side
    ``pad_size`` = ``S``; post-processing functions take them with ``pad_size=out.pad_size``),
    ``None`` without a mask; both from the first ``<SEG>`` pass.
    ``results``: post-processed results by name (``"panoptic"``, ``"instance"``,
    ``"semantic"`` (:class:`~xsam_backend.xsam.processing_post.SemanticResult`), ``"refseg"``
    (the first ``<SEG>``) and ``"refseg_all"`` (a tuple, one per ``<SEG>``), ``"gcgseg"``,
    ``"vgdseg"``, ``"intseg"``), from :mod:`xsam_backend.xsam.processing_post`, in the original
    image frame. ``generated_ids`` /
    ``generated_text`` / ``phrases`` / ``caption``: predict mode. ``tokens_run``: LLM positions
    computed for this call (the cached prefix excluded). ``image_size`` / ``scaled_size``:
    ``(H, W)`` of the original image and of the resized image in the padded SAM frame.
    """

    task: XSamTask
    has_masks: bool
    class_logits: torch.Tensor | None = None
    mask_logits: torch.Tensor | None = None
    results: dict[str, Any] = field(default_factory=dict)
    generated_ids: list[int] = field(default_factory=list)
    generated_text: str | None = None
    phrases: list[str] = field(default_factory=list)
    caption: str | None = None
    tokens_run: int = 0
    image_size: tuple[int, int] = (0, 0)
    scaled_size: tuple[int, int] = (0, 0)
    pad_size: int = 0


@dataclass
class _Prefix:
    cache: DynamicCache
    hidden: torch.Tensor  # (1, P, D_llm)

    def nbytes(self) -> int:
        total = self.hidden.numel() * self.hidden.element_size()
        for layer in self.cache.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total

    def fork(self) -> DynamicCache:
        """A cache that continues the prefix without copying it.

        Layers append by concatenation (``DynamicLayer.update`` rebinds ``keys``/``values`` to new
        tensors), so the fork may share the prefix tensors: extending it never writes into them.
        A deep copy would duplicate the whole prefix (~0.7 GB for the release model in bf16) on
        every prompt.
        """
        forked = copy.copy(self.cache)
        forked.layers = [copy.copy(layer) for layer in self.cache.layers]
        return forked


@dataclass
class ImageState:
    """Everything X-SAM keeps per image: inputs, encoder features, the decoder's image-only
    state and prompt-prefix caches.

    ``image_size``/``scaled_size``: ``(H, W)`` of the original image and of the resized image
    inside the padded SAM frame. ``decoder``: the cross-attention keys and values of every decoder
    layer (132 MB in fp32 for the release model), valid for the decoder weights it was built with.
    ``prefixes``: LLM caches keyed by the prefix ids.
    """

    image_size: tuple[int, int]
    scaled_size: tuple[int, int]
    features: ImageFeatures
    decoder: DecoderImageState
    prefixes: dict[tuple[int, ...], _Prefix] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes of tensors held (features, decoder state and every prefix cache)."""
        prefixes = sum(p.nbytes() for p in self.prefixes.values())
        return self.features.nbytes() + self.decoder.nbytes() + prefixes


class XSamPipeline:
    """The model, its tokenizer and the pre/post-processing, on one device and dtype.

    Not thread-safe: one call at a time (the engine serialises calls). ``thresholds``: default
    post-processing thresholds; ``max_new_tokens``: generation limit (default: the config's, 512).
    """

    def __init__(
        self,
        model: XSamModel,
        tokenizer: PreTrainedTokenizerBase,
        config: XSamConfig,
        thresholds: post.PostprocessThresholds | None = None,
        max_new_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.max_new_tokens = config.max_new_tokens if max_new_tokens is None else max_new_tokens
        self.tokenizer = tokenizer
        self.config = config
        self.thresholds = thresholds or post.PostprocessThresholds()
        self.device = next(model.llm.parameters()).device
        self.dtype = next(model.llm.parameters()).dtype
        self._encoders = {
            bos: PromptEncoder(tokenizer, add_bos=bos, max_length=config.max_length) for bos in (True, False)
        }
        ids = config.token_ids
        self._stop_ids = {ids.end, ids.eos}
        self._siglip_pre, self._sam_pre = preprocess_configs(config.image_processors)

    @classmethod
    def from_dir(
        cls,
        model_dir: Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        attn_implementation: str = "sdpa",
    ) -> XSamPipeline:
        """Load a converted model folder (``config.json``, ``model.safetensors``, tokenizer files)."""
        config = XSamConfig.from_file(model_dir)
        model = load_model(
            config, model_dir, device=device, dtype=dtype, attn_implementation=attn_implementation
        )
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        return cls(model, tokenizer, config)

    # ---- step 1: the image -------------------------------------------------------------------

    @torch.inference_mode()
    def prepare_image(self, image: np.ndarray, trace: Trace | None = None) -> ImageState:
        """Pre-process and encode ``image`` ``(H, W, 3)`` uint8 RGB (original frame)."""
        siglip = preprocess_siglip(image, self._siglip_pre)
        pre = preprocess_sam(image, self._sam_pre)
        sam = pre.pixel_values
        if trace is not None:
            trace["input.siglip_pixel_values"] = siglip
            trace["input.sam_pixel_values"] = sam
            trace["input.scaled_size"] = torch.tensor(pre.scaled_size)
            trace["input.image_size"] = torch.tensor(image.shape[:2])
        features, stages = self.model.encode_image(
            siglip.to(self.device, self.dtype), sam.to(self.device, self.dtype), keep_stages=trace is not None
        )
        if trace is not None and stages is not None:
            trace["siglip.hidden_states_selected"] = stages.siglip_selected
            trace["visual_projector.out"] = stages.visual_tokens
            trace["sam.hidden_states"] = torch.stack(stages.sam_states)
            trace["seg_projector.out"] = stages.sam_tokens
            for i, c in enumerate(stages.connector):
                trace[f"seg_connector.out{i}"] = c
            trace["pixel_decoder.mask_features"] = features.pixels.mask_features
            for i, m in enumerate(features.pixels.multi_scale):
                trace[f"pixel_decoder.multi_scale_features{i}"] = m
        return ImageState(
            image_size=(int(image.shape[0]), int(image.shape[1])),
            scaled_size=(int(pre.scaled_size[0]), int(pre.scaled_size[1])),
            features=features,
            decoder=self.model.prepare_decoder(features),
        )

    def _prefix(self, state: ImageState, prefix_ids: tuple[int, ...]) -> tuple[_Prefix, bool]:
        """The cached prefix for ``prefix_ids`` (built on first use); ``True`` when it was built."""
        cached = state.prefixes.get(prefix_ids)
        if cached is not None:
            return cached, False
        cache = DynamicCache(config=self.model.llm.config)
        embeds = self.model.embed_ids(
            torch.tensor(prefix_ids, device=self.device), state.features.image_tokens
        )
        hidden = self.model.run_llm(embeds, cache)
        prefix = _Prefix(cache=cache, hidden=hidden)
        state.prefixes[prefix_ids] = prefix
        return prefix, True

    # ---- step 2: a prompt ----------------------------------------------------------------------

    def encode_prompt(self, request: XSamRequest) -> EncodedPrompt:
        """The token ids of ``request`` (see :mod:`xsam_backend.xsam.prompting`)."""
        predict = request.mode == "predict" or request.task == "gcgseg"
        num_regions = 0 if request.prompt_masks is None else int(request.prompt_masks.shape[0])
        return self._encoders[request.add_bos].encode_task(
            request.task,
            categories=request.categories,
            expressions=request.expressions,
            num_regions=num_regions,
            is_sentence=request.is_sentence,
            question_template=request.question_template,
            answer_template=None if predict else request.answer,
        )

    @torch.inference_mode()
    def run(
        self,
        state: ImageState,
        request: XSamRequest,
        trace: Trace | None = None,
        logits_processor: LogitsProcessor | None = None,
    ) -> XSamOutput:
        """Answer ``request`` on a prepared image.

        ``logits_processor(generated_ids, scores) -> scores`` may edit the next-token scores
        ``(vocab,)`` in predict mode (e.g. to force a known answer). With ``trace`` every stage
        tensor is recorded under the parity bundle's key names.
        """
        model = self.model
        prompt = self.encode_prompt(request)
        ids = torch.from_numpy(prompt.input_ids).to(self.device)
        if trace is not None:
            trace["input.input_ids"] = ids[None].cpu()
            trace["input.cond_ids"] = torch.from_numpy(prompt.cond_ids)[None]
            trace["input.seg_ids"] = torch.from_numpy(prompt.seg_ids)[None]

        region_embeds = None
        vp: torch.Tensor | None = None
        if prompt.num_regions:
            if request.prompt_masks is None or request.prompt_masks.shape[0] != prompt.num_regions:
                raise ValueError(
                    f"the prompt has {prompt.num_regions} region(s) but prompt_masks do not match"
                )
            vp = preprocess_prompt_masks(request.prompt_masks, self._sam_pre)
            points = torch.stack([sample_prompt_points(m, self.config.num_sample_points) for m in vp])
            region_embeds = model.region_embeddings(state.features, points.to(self.device))
            if trace is not None:
                trace["input.vprompt_masks"] = vp
                trace["sampler.points_yx_norm"] = points
                trace["sampler.region_embeds"] = region_embeds

        image_pos = prompt.image_position
        if image_pos is None:
            raise ValueError("an X-SAM prompt needs the <image> placeholder")
        prefix_ids = tuple(int(i) for i in prompt.input_ids[: image_pos + 1])
        prefix, built = self._prefix(state, prefix_ids)
        cache = prefix.fork()
        suffix_embeds = model.embed_ids(ids[image_pos + 1 :], None, region_embeds)
        spliced = _splice_ids(prompt, self.config.num_image_tokens)
        if trace is not None:
            image_embeds = model.embed_ids(ids[: image_pos + 1], state.features.image_tokens)
            trace["spliced.inputs_embeds"] = torch.cat([image_embeds, suffix_embeds], dim=1)
            for key, value in spliced.items():
                trace[f"spliced.{key}"] = torch.from_numpy(value)[None]
        prompt_len = prefix.hidden.shape[1] + suffix_embeds.shape[1]
        out = XSamOutput(
            task=request.task,
            has_masks=False,
            image_size=state.image_size,
            scaled_size=state.scaled_size,
            pad_size=self.config.sam_image_size,
        )
        out.tokens_run = suffix_embeds.shape[1] + (prefix.hidden.shape[1] if built else 0)

        predict = request.mode == "predict" or request.task == "gcgseg"
        if not predict:
            suffix_hidden = model.run_llm(suffix_embeds, cache)
            cond_ids = torch.from_numpy(spliced["cond_ids"]).to(self.device)
            seg_ids = torch.from_numpy(spliced["seg_ids"]).to(self.device)
            # Phrases and <SEG> sit after <image>: the projector (per position) need not see the
            # cached prefix, ~1.8k positions for the release model.
            start = prefix.hidden.shape[1]
            in_prefix = bool((cond_ids[:start] >= 0).any() or (seg_ids[:start] >= 0).any())
            if trace is not None or in_prefix:
                hidden = torch.cat([prefix.hidden, suffix_hidden], dim=1)
                embeds, start = model.project(hidden)[0], 0
            else:
                embeds = model.project(suffix_hidden)[0]
            if trace is not None:
                trace["llm.last_hidden_state"] = hidden
                trace["llm.logits_last8"] = model.llm.lm_head(hidden[:, -8:])
                trace["llm_projector.out"] = embeds[None]
                trace["index_embeds.cond.ids"] = cond_ids[None].cpu()
                trace["index_embeds.seg.ids"] = seg_ids[None].cpu()
            conds, segs = index_mean(embeds, cond_ids[start:]), index_mean(embeds, seg_ids[start:])
            cond_key = "cond"
        else:
            suffix_hidden, generated, gen_hidden = self._generate(
                suffix_embeds, cache, logits_processor, trace
            )
            out.tokens_run += len(generated) - 1
            prompt_hidden = torch.cat([prefix.hidden, suffix_hidden], dim=1)
            concat = torch.cat([prompt_hidden, gen_hidden], dim=1)  # (1, L + n - 1, D)
            embeds_prompt = model.project(prompt_hidden)[0]
            embeds = model.project(concat)[0]
            out.generated_ids = generated
            out.generated_text = self.tokenizer.decode(generated, skip_special_tokens=False)
            gen = np.asarray(generated[:-1], dtype=np.int64)
            tid = self.config.token_ids
            out_cond = _after_prompt(phrase_ids(gen, tid.p_start, tid.p_end), prompt_len)
            seg_ids = torch.from_numpy(_after_prompt(seg_token_ids(gen, tid.seg), prompt_len)).to(self.device)
            if trace is not None:
                trace["gen.sequences"] = torch.tensor([generated])
                trace["gen.prefill_last_hidden"] = prompt_hidden
                trace["gen.hidden_concat"] = concat
                trace["llm_projector.out_prefill"] = embeds_prompt[None]
                trace["llm_projector.out_concat"] = embeds[None]
                trace["index_embeds.seg.ids"] = seg_ids[None].cpu()
            input_cond = torch.from_numpy(spliced["cond_ids"]).to(self.device)
            if (out_cond >= 0).any():
                output_cond = torch.from_numpy(out_cond).to(self.device)
                conds, cond_key = index_mean(embeds, output_cond), "cond_from_output"
                if trace is not None:
                    trace["index_embeds.cond_from_output.ids"] = output_cond[None].cpu()
            else:
                conds, cond_key = index_mean(embeds_prompt, input_cond), "cond_from_input"
            if trace is not None:
                trace["index_embeds.cond_from_input.ids"] = input_cond[None].cpu()
                trace["gen.step_hidden_lengths"] = torch.tensor([prompt_len] + [1] * (len(generated) - 1))
            segs = index_mean(embeds, seg_ids)
            if request.task == "gcgseg":
                out.phrases = gcg_phrases(np.asarray(generated), self.tokenizer, tid.p_start, tid.p_end)
                out.caption = gcg_caption(out.generated_text)
        if trace is not None:
            trace[f"index_embeds.{cond_key}.mean_embeds"] = conds[None]
            if segs.shape[0]:
                trace["index_embeds.seg.mean_embeds"] = segs[None]

        if segs.shape[0] == 0 or conds.shape[0] == 0:
            return out
        cond_embeds = model.with_background(conds)[0]
        if trace is not None:
            trace["cond_embeds"] = cond_embeds[None]
            trace["seg_embeds"] = segs[None]
            trace["embed_masks"] = torch.ones(1, cond_embeds.shape[0])
        if segs.shape[0] != 1 and request.task not in _ONE_SEG_PER_PASS:
            return out
        decoded = model.decode(state.decoder, segs[0], cond_embeds)
        if trace is not None:
            trace["decoder.masks_queries_logits_lowres"] = decoded.mask_logits
            trace["decoder.last_query_states"] = decoded.query_states
            trace["class_queries_logits"] = decoded.class_logits
        self._postprocess(out, decoded, state, request, vp, trace)
        if request.task in _ONE_SEG_PER_PASS:
            out.results["refseg_all"] = self._refseg_passes(out, state, request, segs, cond_embeds)
        return out

    def _refseg_passes(
        self,
        out: XSamOutput,
        state: ImageState,
        request: XSamRequest,
        segs: torch.Tensor,
        cond_embeds: torch.Tensor,
    ) -> tuple[post.MaskResult, ...]:
        """One :class:`~xsam_backend.xsam.processing_post.MaskResult` per ``<SEG>`` ``segs``
        ``(K, D)``: the first pass is already in ``out``; pass ``k`` is read with phrase ``k``."""
        num_phrases = cond_embeds.shape[0] - 1
        th = request.thresholds or self.thresholds
        passes = [out.results["refseg"]]
        for k in range(1, segs.shape[0] if num_phrases == 1 else min(segs.shape[0], num_phrases)):
            decoded = self.model.decode(state.decoder, segs[k], cond_embeds)
            passes.append(
                post.refseg_postprocess(
                    decoded.class_logits[0].float(),
                    decoded.mask_logits[0].float(),
                    state.scaled_size,
                    state.image_size,
                    th,
                    pad_size=out.pad_size,
                    category=k if num_phrases > 1 else 0,
                )
            )
        return tuple(passes)

    def __call__(self, image: np.ndarray, request: XSamRequest) -> XSamOutput:
        """``run(prepare_image(image), request)``: no caching."""
        return self.run(self.prepare_image(image), request)

    # ---- generation ------------------------------------------------------------------------------

    def _generate(
        self,
        suffix_embeds: torch.Tensor,
        cache: DynamicCache,
        logits_processor: LogitsProcessor | None,
        trace: Trace | None = None,
    ) -> tuple[torch.Tensor, list[int], torch.Tensor]:
        """Greedy decoding after the cached prefix.

        Returns the prompt-suffix hidden states ``(1, T_s, D)``, the generated ids (the stop token
        ``<|end|>`` or EOS included, as the official ``sequences``) and the hidden states of every
        generated token but the last ``(1, n - 1, D)``.
        """
        model = self.model
        hidden = model.run_llm(suffix_embeds, cache)
        suffix_hidden = hidden
        generated: list[int] = []
        gen_hidden: list[torch.Tensor] = []
        for _ in range(self.max_new_tokens):
            scores = model.llm.lm_head(hidden[:, -1])[0].float()
            if trace is not None and not generated:
                trace["gen.prefill_logits_last"] = scores[None, None]
            if logits_processor is not None:
                scores = logits_processor(generated, scores)
            token = int(scores.argmax())
            generated.append(token)
            if token in self._stop_ids:
                break
            embeds = model.llm.get_input_embeddings()(torch.tensor([[token]], device=self.device))
            hidden = model.run_llm(embeds, cache)
            gen_hidden.append(hidden)
        empty = suffix_hidden.new_zeros((1, 0, suffix_hidden.shape[-1]))
        return suffix_hidden, generated, torch.cat(gen_hidden, dim=1) if gen_hidden else empty

    # ---- post-processing -------------------------------------------------------------------------

    def _postprocess(
        self,
        out: XSamOutput,
        decoded: DecoderOutput,
        state: ImageState,
        request: XSamRequest,
        prompt_masks: torch.Tensor | None,
        trace: Trace | None,
    ) -> None:
        """Run the task's post-processing on the stride-8 logits; ``prompt_masks``: ``(N, S, S)``
        the pre-processed visual prompts (``vgdseg``/``intseg``)."""
        out.has_masks = True
        out.class_logits = decoded.class_logits.float()
        out.mask_logits = decoded.mask_logits.float()
        logits, masks = out.class_logits[0], out.mask_logits[0]
        frames = (state.scaled_size, state.image_size)
        pad = out.pad_size
        th = request.thresholds or self.thresholds
        if trace is not None:
            padded = upsample_mask_logits(out.mask_logits, pad)
            trace["masks_queries_logits"] = padded
            trace["masks_queries_logits_orig"] = post.sem_seg_postprocess(padded[0], *frames)[None]
        task = request.task
        if task in ("genseg", "ovseg"):
            for kind in request.segmentation:
                if kind == "panoptic":
                    pan = post.panoptic_postprocess(
                        logits, masks, *frames, request.stuff_indices, th, pad_size=pad
                    )
                    out.results["panoptic"] = pan
                    _record(trace, "post.panoptic", segmentation=pan.segmentation)
                elif kind == "instance":
                    ins = post.instance_postprocess(logits, masks, *frames, th, pad_size=pad)
                    out.results["instance"] = ins
                    _record_instances(trace, "post.instance", ins)
                elif kind == "semantic":
                    sem = post.semantic_segments(logits, masks, *frames, pad_size=pad)
                    out.results["semantic"] = sem
                    _record(trace, "post.semantic", segmentation=sem.segmentation)
                else:
                    raise ValueError(f"segmentation must be panoptic, instance or semantic; got {kind!r}")
        elif task in ("refseg", "reaseg"):
            ref = post.refseg_postprocess(logits, masks, *frames, th, pad_size=pad)
            out.results["refseg"] = ref
            _record(trace, "post.refseg", segmentation=_paint(ref.mask, 1))
        elif task == "gcgseg":
            gcg = post.gcgseg_postprocess(logits, masks, *frames, th, pad_size=pad)
            out.results["gcgseg"] = gcg
            _record(trace, "post.gcgseg", segmentation=gcg.segmentation)
        elif task in ("vgdseg", "intseg"):
            if prompt_masks is None:
                raise ValueError(f"{task} needs prompt masks")
            if task == "vgdseg":
                vgd = post.vgdseg_postprocess(logits, masks, *frames, th, pad_size=pad)
                out.results["vgdseg"] = vgd
                _record_instances(trace, "post.vgdseg", vgd)
            else:
                intseg = post.intseg_postprocess(logits, masks, *frames, prompt_masks[0], th, pad_size=pad)
                out.results["intseg"] = intseg
                _record(trace, "post.intseg", segmentation=_paint(intseg.mask, 1))
            if trace is not None:
                prompt_orig = post.prompt_masks_to_original(prompt_masks, *frames)
                _record(trace, f"post.{task}", vprompt_masks_orig=prompt_orig)


def _paint(mask: torch.Tensor, value: int) -> torch.Tensor:
    """``value`` on the mask, 255 elsewhere (the official id-map convention)."""
    return torch.where(mask, torch.tensor(value), torch.tensor(255))


def _record(trace: Trace | None, prefix: str, **tensors: torch.Tensor) -> None:
    if trace is not None:
        for name, value in tensors.items():
            trace[f"{prefix}.{name}"] = value


def _record_instances(trace: Trace | None, prefix: str, result: post.InstanceResult) -> None:
    _record(
        trace,
        prefix,
        pred_masks=result.masks,
        scores=result.scores,
        pred_classes=result.classes,
        pred_boxes=result.boxes,
        segmentation=result.segmentation,
    )


def preprocess_configs(processors: Mapping[str, Any]) -> tuple[SiglipPreprocessConfig, SamPreprocessConfig]:
    """Pre-processing configs from a model config's ``image_processors`` section (defaults: the
    released model's 384² SigLIP and 1024² SAM inputs)."""
    sig = processors.get("siglip", {})
    sam = processors.get("sam", {})
    siglip_config = SiglipPreprocessConfig(
        size=int(sig.get("size", {}).get("height", 384)),
        resample=int(sig.get("resample", 2)),
        mean=tuple(sig.get("image_mean", (0.5, 0.5, 0.5))),
        std=tuple(sig.get("image_std", (0.5, 0.5, 0.5))),
        pad_to_square=bool(sig.get("expand_to_square", True)),
        fill=tuple(sig.get("expand_to_square_fill", (127, 127, 127))),
    )
    sam_config = SamPreprocessConfig(
        longest_edge=int(sam.get("size", {}).get("longest_edge", 1024)),
        pad_size=int(sam.get("pad_size", {}).get("height", 1024)),
        resample=int(sam.get("resample", 2)),
        mean=tuple(sam.get("image_mean", IMAGENET_MEAN)),
        std=tuple(sam.get("image_std", IMAGENET_STD)),
    )
    return siglip_config, sam_config


def _splice_ids(prompt: EncodedPrompt, num_image_tokens: int) -> dict[str, np.ndarray]:
    """``input_ids``/``cond_ids``/``seg_ids``/``labels`` after ``<image>`` became
    ``num_image_tokens`` positions (id −200, cond/seg −1, label −100): each ``(L,)`` int64."""
    pos = prompt.image_position
    out = {}
    for name, arr, fill in (
        ("input_ids", prompt.input_ids, prompt.input_ids[pos] if pos is not None else -200),
        ("cond_ids", prompt.cond_ids, -1),
        ("seg_ids", prompt.seg_ids, -1),
        ("labels", prompt.labels, -100),
    ):
        if pos is None:
            out[name] = arr.copy()
        else:
            out[name] = np.concatenate(
                [arr[:pos], np.full(num_image_tokens, fill, dtype=np.int64), arr[pos + 1 :]]
            )
    return out


def _after_prompt(ids: np.ndarray, prompt_len: int) -> np.ndarray:
    """Ids of the generated tokens placed in the ``prompt + generated`` frame (−1 on the prompt)."""
    return np.concatenate([np.full(prompt_len, -1, dtype=np.int64), ids])
