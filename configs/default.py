"""Every knob of reacgan-jax with its default and a one-line comment.

Experiment configs start from this one (``config = default.get_config()``) and
override only what differs. Values follow PyTorch-StudioGAN's CIFAR10 ReACGAN
config unless a comment says otherwise (see shared/SPEC.md sections 1-5).
Unset optional values use '' (strings) or -1 (numbers) so that ml_collections
keeps each field's type: an override of the wrong type fails loudly.
"""

import ml_collections

from reacgan_jax.augment import ada_heuristic
from reacgan_jax.models import stylegan2


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0  # the one seed every random stream is split from

  # ---- data ---------------------------------------------------------------
  config.data = ml_collections.ConfigDict()
  # cifar10 | cifar100 (the official binary releases, StudioGAN's image order, no TensorFlow:
  # reacgan_jax/data/cifar.py) | tfds | npz | folder | tiny_imagenet | cifar_binary (the last
  # two: reacgan_jax/data/datasets.py)
  config.data.source = 'cifar10'
  # The dataset's name: TFDS's name for source=tfds; for the others it labels the reference
  # statistics and protocol lines (source=cifar10|cifar100: the same as the source).
  config.data.name = 'cifar10'
  config.data.tfds_data_dir = ''  # '' = TFDS default (~/tensorflow_datasets)
  config.data.npz_path = ''  # source=npz: file with x_train/y_train (x_test/y_test)
  config.data.npz_layout = 'nhwc'  # npz image layout: nhwc | cifar_rows (N x 3072, R/G/B planes)
  config.data.npz_resize = False  # npz of another size than image_size: resize (True) or refuse
  config.data.folder = ''  # source=folder: root/<class_name>/*.{png,jpg,jpeg}
  # source=tiny_imagenet: the official zip (or its unpacked folder, or train/ + valid/ class
  # folders); source=cifar_binary: the folder of data_batch_*.bin / test_batch.bin (ArtBench-10)
  config.data.root = ''
  # A local npz of the dataset: source=tfds reads it when TFDS cannot load (offline machine);
  # source=cifar10|cifar100 reads it instead of downloading the release (it must hold the same
  # images in the release's order, as the shared cifar10.npz does). '' = none.
  config.data.offline_npz = ''
  # source=cifar10|cifar100: download the release into <cache>/downloads/ when it is not there
  # (size and sha256 checked), from download_url ('' = the official URL; a mirror otherwise).
  config.data.download = True
  config.data.download_url = ''
  config.data.train_split = 'train'
  config.data.eval_split = 'test'  # reference split for FID (SPEC 5: 10k test)
  config.data.image_size = 32  # H = W of the model
  config.data.num_classes = 10  # checked against the data
  config.data.crop = 'none'  # none | center (center crop + resize, ImageNet)
  config.data.random_flip = True  # random horizontal flip of real images
  config.data.class_balanced = False  # class-balanced sampling (evaluation)
  config.data.train_per_class = -1  # limited data: train on the first N images per class; -1 = all
  # tfds: memory | stream | auto (stream splits over 4 GiB, e.g. ImageNet)
  config.data.load = 'auto'
  config.data.shuffle_buffer = 10_000  # examples in the shuffle buffer of the streaming path
  config.data.tfds_download = False  # let TFDS download/prepare a missing dataset (needs network)
  # TFDS manual_dir (ImageNet tars); '' = <data_dir>/downloads/manual
  config.data.tfds_manual_dir = ''
  config.data.cache_dir = ''  # decoded npz/folder arrays; '' = ~/.cache/reacgan_jax, 'none' = off
  config.data.prefetch = 2  # batches prepared ahead by a background thread (0 = in the caller)

  # ---- model --------------------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.backbone = 'biggan'  # dcgan | deep_conv | resnet | biggan | stylegan2
  config.model.cond_method = 'reacgan'  # none | acgan | pd | reacgan; stylegan2: spd, not pd
  config.model.z_dim = 80
  config.model.shared_dim = 128  # BigGAN shared class embedding width
  config.model.g_conv_dim = 96  # channel multiplier of G
  config.model.d_conv_dim = 96  # channel multiplier of D
  config.model.embed_dim = 512  # ReACGAN embedding / proxy width
  config.model.g_attn_block = 2  # self-attention after this G block (0 = none)
  config.model.d_attn_block = 1  # self-attention after this D block (0 = none)
  config.model.apply_g_sn = True  # spectral norm on G's convs/linears
  config.model.apply_d_sn = True  # spectral norm on D's convs/linears/embeddings
  config.model.sn_eps = 1e-6  # eps of SN's u/v normalisation (reference: 1e-6)
  config.model.sn_power_iterations = 1  # power iterations per training step
  # SN of embedding tables: u over the classes as torch's spectral_norm(nn.Embedding)
  # (StudioGAN sn_embedding), or 'width' (legacy reacgan-jax: u over the embedding width).
  config.model.sn_embedding_u = 'classes'
  # SN when sampling: 'iterate' (StudioGAN's evaluation, which leaves its SN layers in train
  # mode) divides by the sigma of a training forward's power iteration from the stored u, v
  # (not kept); 'stored' by u^T W v of the stored u, v (torch eval mode: wrong for an EMA G,
  # whose averaged u, v are shorter than 1); 'recompute' (legacy) sigma = ||W^T u||.
  config.model.sn_eval = 'iterate'
  config.model.g_init = 'ortho'  # ortho | N02 | glorot
  config.model.d_init = 'ortho'  # ortho | N02 | glorot
  # G's BN at evaluation/sampling: running (running averages), batch (batch
  # statistics), standing (statistics recomputed over many batches).
  config.model.bn_eval = 'running'
  config.model.standing_batches = 16  # batches used by bn_eval=standing
  config.model.dtype = 'float32'  # compute dtype: float32 | bfloat16
  # Convolutions: 'auto' | 'xla' | 'onednn' (oneDNN custom call on CPU, the onednn extra;
  # float32 results equal XLA's to rounding, bf16 uses the CPU's bf16 dot instructions). 'auto'
  # takes oneDNN on one x86-64 CPU device where the extension builds, else XLA, and logs why
  # (ops/conv.resolve).
  config.model.conv_backend = 'auto'
  # dropout rate of the dcgan D (ACGAN paper); read by dcgan only (models.BACKBONES keys)
  config.model.d_dropout = 0.5
  # backbone=stylegan2: its own knobs (StudioGAN MODEL/STYLEGAN keys; models/stylegan2.py). It
  # reads z_dim and embed_dim above, no SN (apply_*_sn must be False), no *_conv_dim.
  config.model.stylegan2 = stylegan2.default_config()

  # ---- losses (SPEC 1) ----------------------------------------------------
  config.loss = ml_collections.ConfigDict()
  config.loss.adv = 'hinge'  # hinge | logistic | wasserstein
  config.loss.cond_lambda = 0.5  # weight of the conditional loss (ACGAN CE / D2D-CE)
  config.loss.temperature = 0.5  # D2D-CE temperature T
  config.loss.margin_pos = 0.98  # D2D-CE positive margin m_p
  config.loss.margin_neg = -1.0  # D2D-CE negative margin; < 0 means 1 - margin_pos
  config.loss.row_max_shift = True  # True: StudioGAN's form (default); False: paper form
  config.loss.false_negative_removal = True  # mask same-class pairs (ablation knob)
  # False: D2D-CE without margins (m_p = 1, m_n = -1: every pair contributes; ablation knob)
  config.loss.margins = True
  # Extra loss terms by name (objectives.TERMS), comma lists, after adv and cond: e.g. 'r1'
  config.loss.d_terms = ''
  config.loss.g_terms = ''
  # 'r1' (reacgan_jax/losses/regularizers.py): StyleGAN2's R1 on reals, StudioGAN LOSS.r1_lambda,
  # STYLEGAN.d_reg_interval (counted over D updates) and LOSS.r1_place: inside = inside_loop
  # (added to that D update's gradient), separate = outside_loop (an Adam step of its own)
  config.loss.r1_lambda = 0.01
  config.loss.r1_interval = 16
  config.loss.r1_place = 'separate'
  # 'pl' (G): path-length regularisation, STYLEGAN.pl_weight / g_reg_interval; decay 0.01 and
  # batch shrink 2 as StudioGAN's PathLengthRegularizer (it is off in every CIFAR-10 config)
  config.loss.pl_weight = 2.0
  config.loss.pl_interval = 4
  config.loss.pl_decay = 0.01
  config.loss.pl_batch_shrink = 2

  # ---- optimisation -------------------------------------------------------
  config.optim = ml_collections.ConfigDict()
  config.optim.g_lr = 2.8284e-4
  config.optim.d_lr = 2.8284e-4
  config.optim.beta1 = 0.5
  config.optim.beta2 = 0.999
  config.optim.eps = 1e-6  # StudioGAN's Adam eps
  config.optim.schedule = 'constant'  # constant | linear_decay (to 0 at train.steps)
  # A network with a lazy term (interval k > 1) gets lr * c, betas ** c, c = k / (k + 1)
  config.optim.lazy_scaling = True
  # The k of that scaling per network; -1 = its lazy term's interval (1.0 without one).
  # StudioGAN scales every StyleGAN2 optimiser by its reg interval even with the regulariser
  # off (config.py: g_reg_interval 4 for G in every CIFAR-10 StyleGAN2 config).
  config.optim.g_lazy_interval = -1
  config.optim.d_lazy_interval = -1

  # ---- training -----------------------------------------------------------
  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 128  # global batch (all devices, all hosts)
  config.train.steps = 100_000  # generator updates
  config.train.d_updates_per_step = 5  # D updates per G update, each on a fresh real batch
  config.train.d_first = True  # StudioGAN OPTIMIZATION.d_first: D updates, then G (False: G first)
  config.train.ema = True  # keep an EMA copy of G
  config.train.ema_decay = 0.9999
  config.train.ema_start = 1000  # plain copy before this step
  config.train.ema_rule = 'lerp'  # lerp: torch's p.lerp(p_ema, decay) (StudioGAN); mix: legacy
  # > 0: StyleGAN2's EMA instead (StudioGAN EmaStylegan2): decay 0.5 ** (B / n), n = min(
  # ema_kimg * 1000, B * step * ema_rampup) images (no rampup when ema_rampup < 0); G's
  # collections (w_avg) copied, not averaged. ema_decay / ema_start are then unused.
  config.train.ema_kimg = -1.0
  config.train.ema_rampup = -1.0
  config.train.diffaug_policy = ''  # e.g. 'color,translation,cutout'; '' = off
  # augment.AUGMENTATIONS name: none | diffaug | ada; '' = diffaug when diffaug_policy is set
  config.train.augment = ''
  config.train.bn_sync = True  # BN statistics over the global batch (device-count independent)
  config.train.log_every = 100  # steps between scalar logs (and host syncs)
  # Persistent XLA compilation cache in <$REACGAN_JAX_CACHE or ~/.cache/reacgan_jax>/xla: a
  # resumed or repeated run (same config, same jax) loads its compiled step instead of compiling.
  config.train.compilation_cache = True
  config.train.sample_every = 2000  # steps between sample grids
  config.train.checkpoint_every = 2000  # steps between checkpoints
  config.train.keep_checkpoints = 3  # newest checkpoints kept (plus the best-FID one)
  config.train.eval_every = 0  # steps between evaluations; 0 = at the end only; -1 = never
  config.train.grid_classes = 10  # rows of the sample grid (classes shown)
  config.train.grid_per_class = 10  # columns of the sample grid
  # Weights & Biases project that also gets the metrics.jsonl scalars and sample grids; '' = off.
  # Needs the `wandb` extra; no login needed (WANDB_MODE respected, else offline without one).
  config.train.wandb = ''

  # ---- adaptive augmentation (train.augment='ada'; keys and comments: ada_heuristic.py) ----
  config.ada = ada_heuristic.default_config()

  # ---- evaluation (SPEC 5) ------------------------------------------------
  config.eval = ml_collections.ConfigDict()
  config.eval.num_samples = 10_000  # generated images per evaluation
  config.eval.batch_size = 200  # generation / Inception batch (global)
  config.eval.inception_weights = ''  # converted Flax weights; '' = default cache path
  # Inception's convolutions: 'auto' | 'xla' | 'onednn' (float32 oneDNN on CPU; the onednn
  # extra); 'auto' as model.conv_backend.
  config.eval.conv_backend = 'auto'
  # legacy (torch bilinear) | friendly (PIL bilinear) | clean (PIL bicubic)
  config.eval.resize = 'legacy'
  # comma list: fid, is, prdc, kid, ifid, accuracy, msssim, fd_dinov2
  config.eval.metrics = 'fid,is,prdc'
  # 'ours': class-balanced labels, IS over is_splits | 'studiogan': StudioGAN's evaluate(), labels
  # i.i.d. uniform and IS over 1 split (is_splits unused); set num_samples = len(eval split) too
  config.eval.protocol = 'ours'
  config.eval.is_splits = 10  # Inception Score splits (reference 1, original protocol 10)
  config.eval.kid_subsets = 100  # 'kid': random subsets averaged (stylegan2-ada's num_subsets)
  config.eval.kid_subset_size = 1000  # 'kid': rows per subset, capped at min(n_gen, n_ref)
  config.eval.prdc_k = 5  # nearest neighbours for precision/recall/density/coverage
  # reference images: > 0 = that many of the eval split, class-balanced, in file order (quick
  # FIDs: biased, compare only runs with the same value); -1 = the whole split (SPEC 5)
  config.eval.num_ref = -1
  # FID reference statistics: '' = computed once and cached at <cache>/<dataset>_<split>.npz;
  # FILE = read FILE, which must exist and be of this dataset, split, image_size and num_ref
  # (else one error line); ref_stats_create=True computes a missing FILE and writes it there.
  config.eval.ref_stats = ''
  config.eval.ref_stats_create = False
  # 'accuracy' classifier; '' = <cache>/cifar10_classifier.msgpack
  config.eval.classifier_weights = ''
  # 'fd_dinov2': converted DINOv2 ViT-L/14 (python -m reacgan_jax.evaluation.dinov2_convert);
  # '' = <cache>/dinov2_vitl14.msgpack
  config.eval.dinov2_weights = ''
  config.eval.msssim_pairs = 100  # 'msssim': random same-class pairs per class (ACGAN paper)
  return config
