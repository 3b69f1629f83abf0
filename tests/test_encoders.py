"Tests of m2df.encoders: tiny and real open_clip backbones, offline weight resolution, checkpoints, the text cache."
import hashlib, http.server, os, re, socket, threading, time
from pathlib import Path

import pytest
import torch
import open_clip
import huggingface_hub
from safetensors.torch import save_file

from m2df import encoders
from m2df.encoders import (CLIPBackbone, ClassTextCache, PretrainedWeightsMissing, find_cached_weights,
                           load_clip_model, register_tiny_configs, TINY_CONFIGS)

TINY = ('m2df-tiny-vit', 'm2df-tiny-rn')


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    "No test may reach the network: Hugging Face offline mode, no download permission."
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.delenv('M2DF_DOWNLOAD', raising=False)


@pytest.fixture(scope='module')
def tiny_vit():
    return CLIPBackbone('m2df-tiny-vit').eval()


def fake_hf_cache(root: Path, repo: str, filename: str, payload=None) -> Path:
    "Lay out `root` as the Hugging Face hub cache holding `repo`/`filename` (written by `payload(path)` or dummy bytes)."
    folder = root / ('models--' + repo.replace('/', '--'))
    snap = folder / 'snapshots' / ('a' * 40)
    snap.mkdir(parents=True)
    (folder / 'refs').mkdir()
    (folder / 'refs' / 'main').write_text('a' * 40)
    f = snap / filename
    payload(f) if payload else f.write_bytes(b'not really weights')
    return f


def test_register_idempotent():
    names = register_tiny_configs()
    assert names == TINY
    n = len(open_clip.factory._MODEL_CONFIG_PATHS)
    assert register_tiny_configs() == TINY
    assert len(open_clip.factory._MODEL_CONFIG_PATHS) == n
    for name in TINY:
        cfg = open_clip.get_model_config(name)
        assert cfg == TINY_CONFIGS[name]
        assert cfg['text_cfg']['context_length'] == 77 and cfg['text_cfg']['vocab_size'] == 49408
        assert cfg['vision_cfg']['image_size'] == 56


@pytest.mark.parametrize('name', TINY)
def test_tiny_shapes(name):
    bb = CLIPBackbone(name)
    assert (bb.dim, bb.image_size) == (64, 56)
    assert len(bb.mean) == 3 and len(bb.std) == 3
    for mode in (True, False):
        bb.train(mode)
        for B, T in ((1, 1), (2, 3), (3, 8), (1, 12)):
            if mode and B * T == 1 and name == 'm2df-tiny-rn': continue   # BatchNorm on a 1×1 map needs 2 frames
            x = torch.randn(B, T, 3, 56, 56)
            f = bb.encode_frames(x)
            assert f.shape == (B, T, 64) and f.dtype == torch.float32
    # frames are encoded independently (in eval mode): the feature of a frame does not depend on its clip-mates
    bb.eval()
    x = torch.randn(2, 4, 3, 56, 56)
    torch.testing.assert_close(bb.encode_frames(x)[1, 2], bb.encode_frames(x[1:, 2:3])[0, 0], atol=1e-5, rtol=1e-5)


def test_encode_frames_autocast_is_float32(tiny_vit):
    with torch.autocast('cpu', dtype=torch.bfloat16):
        f = tiny_vit.encode_frames(torch.randn(1, 2, 3, 56, 56))
    assert f.dtype == torch.float32


def test_encode_frames_bad_shapes(tiny_vit):
    for shape in ((2, 3, 56, 56), (1, 2, 1, 56, 56), (1, 2, 3, 64, 64)):
        with pytest.raises(ValueError, match='encode_frames expects'):
            tiny_vit.encode_frames(torch.randn(*shape))
    with pytest.raises(ValueError, match='non-empty list'):
        tiny_vit.encode_text('a photo of x')
    with pytest.raises(ValueError, match='non-empty list'):
        tiny_vit.encode_text([])


def test_text_tower_frozen_and_eval():
    bb = CLIPBackbone('m2df-tiny-vit').train()
    text_params = [(n, p) for n, p in bb.clip.named_parameters() if not n.startswith('visual.')]
    assert text_params and not any(p.requires_grad for _, p in text_params)
    assert not bb.clip.logit_scale.requires_grad               # CLIP's contrastive temperature is frozen too
    assert all(p.requires_grad for p in bb.clip.visual.parameters())
    assert bb.training and bb.clip.visual.training
    for n, m in bb.clip.named_children():
        if n != 'visual':
            assert not m.training, n
            assert not any(s.training for s in m.modules()), n
    e = bb.encode_text(['a photo of archery', 'a photo of yoga'])
    assert e.shape == (2, 64) and not e.requires_grad
    # a training step leaves the text tower untouched
    before = {n: p.detach().clone() for n, p in text_params}
    opt = torch.optim.SGD([p for p in bb.parameters() if p.requires_grad], lr=1.)
    bb.encode_frames(torch.randn(1, 2, 3, 56, 56)).sum().backward()
    opt.step()
    assert all(torch.equal(before[n], p) for n, p in text_params)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in bb.clip.visual.parameters())


@pytest.mark.parametrize('name', TINY)
def test_freeze_visual(name):
    bb = CLIPBackbone(name, freeze_visual=True).train()
    assert [n for n, p in bb.named_parameters() if p.requires_grad] == []
    assert not bb.clip.visual.training
    f = bb.encode_frames(torch.randn(1, 2, 3, 56, 56))
    assert not f.requires_grad


def test_missing_weights_clear_error_fast(tmp_path):
    t0 = time.time()
    with pytest.raises(PretrainedWeightsMissing) as ei:
        CLIPBackbone('RN50', 'openai', cache_dir=str(tmp_path))
    assert time.time() - t0 < 15
    msg = str(ei.value)
    for part in ("'RN50'", "'openai'", 'timm/resnet50_clip.openai', 'open_clip_model.safetensors', 'RN50.pt',
                 'openaipublic', str(tmp_path), 'HF_HUB_CACHE', "pretrained='<path to", 'M2DF_DOWNLOAD'):
        assert part in msg, part
    assert isinstance(ei.value, FileNotFoundError)


def test_missing_weights_default_caches(tmp_path, monkeypatch):
    "Without cache_dir the lookup uses the Hugging Face cache in force and ~/.cache/clip, and names them."
    hub = tmp_path / 'hub'
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(hub))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    with pytest.raises(PretrainedWeightsMissing) as ei:
        load_clip_model('ViT-B-16', 'openai')
    msg = str(ei.value)
    assert str(hub) in msg and str(tmp_path / 'home' / '.cache' / 'clip') in msg
    assert 'timm/vit_base_patch16_clip_224.openai' in msg and 'ViT-B-16.pt' in msg
    # once the file is in that cache it is found (no download)
    f = fake_hf_cache(hub, 'timm/vit_base_patch16_clip_224.openai', 'open_clip_model.safetensors')
    assert find_cached_weights('ViT-B-16', 'openai') == str(f)


def test_find_cached_weights_order(tmp_path):
    assert find_cached_weights('RN50', 'openai', cache_dir=str(tmp_path)) is None
    url_file = tmp_path / 'RN50.pt'
    url_file.write_bytes(b'x')
    assert find_cached_weights('RN50', 'openai', cache_dir=str(tmp_path)) == str(url_file)
    bin_file = fake_hf_cache(tmp_path, 'timm/resnet50_clip.openai', 'open_clip_pytorch_model.bin')
    assert find_cached_weights('RN50', 'openai', cache_dir=str(tmp_path)) == str(bin_file)
    (bin_file.parent / 'open_clip_model.safetensors').write_bytes(b'x')   # safetensors preferred, as open_clip does
    assert find_cached_weights('RN50', 'openai', cache_dir=str(tmp_path)) == str(bin_file.parent / 'open_clip_model.safetensors')
    with pytest.raises(ValueError, match="tags: \\['openai'"):
        find_cached_weights('RN50', 'laion')


def test_tag_weights_load_from_cache_offline(tmp_path, monkeypatch, tiny_vit):
    "A pretrained tag whose file is cached loads offline, with the tag's QuickGELU and preprocessing."
    cfg = dict(hf_hub='m2df/tiny-test/', quick_gelu=True, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, 'm2df-tiny-vit', {'testtag': cfg})
    src = CLIPBackbone('m2df-tiny-vit', quick_gelu=True).eval()
    fake_hf_cache(tmp_path, 'm2df/tiny-test', 'open_clip_model.safetensors',
                  lambda p: save_file({k: v.contiguous() for k, v in src.clip.state_dict().items()}, str(p)))
    bb = CLIPBackbone('m2df-tiny-vit', 'testtag', cache_dir=str(tmp_path)).eval()
    assert any(isinstance(m, open_clip.transformer.QuickGELU) for m in bb.modules())
    assert (bb.mean, bb.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x = torch.randn(1, 3, 3, 56, 56)
    torch.testing.assert_close(bb.encode_frames(x), src.encode_frames(x))
    torch.testing.assert_close(bb.encode_text(['a photo of x']), src.encode_text(['a photo of x']))
    assert not any(isinstance(m, open_clip.transformer.QuickGELU) for m in tiny_vit.modules())   # default: plain GELU


def test_checkpoint_roundtrip(tmp_path, tiny_vit):
    path = tmp_path / 'tiny.pt'
    torch.save(tiny_vit.clip.state_dict(), path)
    bb = CLIPBackbone('m2df-tiny-vit', pretrained=str(path)).eval()
    x = torch.randn(2, 3, 3, 56, 56)
    prompts = ['a photo of juggling', 'a photo of surfing']
    torch.testing.assert_close(bb.encode_frames(x), tiny_vit.encode_frames(x))
    torch.testing.assert_close(bb.encode_text(prompts), tiny_vit.encode_text(prompts))
    # a fresh random model differs (so the comparison above can fail)
    other = CLIPBackbone('m2df-tiny-vit').eval()
    assert not torch.allclose(other.encode_frames(x), tiny_vit.encode_frames(x))
    # wrapped state dicts as training scripts write them
    torch.save({'state_dict': {'module.' + k: v for k, v in tiny_vit.clip.state_dict().items()}}, tmp_path / 'wrapped.pt')
    torch.testing.assert_close(CLIPBackbone('m2df-tiny-vit', str(tmp_path / 'wrapped.pt')).eval().encode_frames(x),
                               tiny_vit.encode_frames(x))


def test_checkpoint_errors(tmp_path, tiny_vit):
    path = tmp_path / 'tiny.pt'
    torch.save(tiny_vit.clip.state_dict(), path)
    with pytest.raises(ValueError, match="does not fit open_clip model 'm2df-tiny-rn'") as ei:
        CLIPBackbone('m2df-tiny-rn', pretrained=str(path))
    assert str(path) in str(ei.value)
    sd = tiny_vit.clip.state_dict()
    sd['visual.proj'] = torch.zeros(3, 3)
    torch.save(sd, tmp_path / 'bad_shape.pt')
    with pytest.raises(ValueError, match=r'visual\.proj is \[3, 3\] in the file, \[64, 64\] in the model'):
        CLIPBackbone('m2df-tiny-vit', pretrained=str(tmp_path / 'bad_shape.pt'))
    (tmp_path / 'garbage.pt').write_text('hello')
    with pytest.raises(ValueError, match='garbage.pt'):
        CLIPBackbone('m2df-tiny-vit', pretrained=str(tmp_path / 'garbage.pt'))
    with pytest.raises(FileNotFoundError, match='missing.safetensors'):
        CLIPBackbone('m2df-tiny-vit', pretrained=str(tmp_path / 'missing.safetensors'))
    with pytest.raises(ValueError, match='is a folder'):
        CLIPBackbone('m2df-tiny-vit', pretrained=str(tmp_path))
    with pytest.raises(ValueError, match="tags: \\['openai'"):
        CLIPBackbone('RN50', pretrained='opneai')


def test_unknown_model_name():
    with pytest.raises(ValueError, match='open_clip.list_models') as ei:
        CLIPBackbone('ViT-B16')
    assert 'ViT-B-16' in str(ei.value) and 'backbone' in str(ei.value)


def test_quick_gelu_from_openai_file_name(tmp_path):
    "A file named like OpenAI's download, or in the tag's HF cache folder, is read as that tag (QuickGELU)."
    assert encoders._tag_of_file('RN50', str(tmp_path / 'RN50.pt')).get('quick_gelu') is True
    f = fake_hf_cache(tmp_path, 'timm/resnet50_clip.openai', 'open_clip_model.safetensors')
    assert encoders._tag_of_file('RN50', str(f)).get('quick_gelu') is True
    assert encoders._tag_of_file('RN50', str(tmp_path / 'mine.pt')) == {}


def test_torchscript_archive_is_refused_with_its_conversion(tmp_path, tiny_vit):
    "OpenAI's original format is not loaded (torch.jit.load runs the archive's code); the error gives the conversion."
    import copy
    m = copy.deepcopy(tiny_vit.clip)
    mask = m.attn_mask; del m.attn_mask; m.attn_mask = mask   # as in OpenAI's models: a plain attribute
    torch.jit.script(m).save(tmp_path / 'jit.pt')
    assert encoders.is_torchscript_archive(str(tmp_path / 'jit.pt'))
    with pytest.raises(encoders.NotAWeightsFile, match='not a weights file: .*jit.pt .*TorchScript archive') as e:
        CLIPBackbone('m2df-tiny-vit', str(tmp_path / 'jit.pt'))
    assert 'torch.jit.load' in str(e.value) and "pretrained='openai'" in str(e.value) and '-quickgelu' in str(e.value)
    torch.save(torch.jit.load(tmp_path / 'jit.pt', map_location='cpu').state_dict(), tmp_path / 'converted.pt')
    bb = CLIPBackbone('m2df-tiny-vit', str(tmp_path / 'converted.pt')).eval()
    x = torch.randn(1, 2, 3, 56, 56)
    torch.testing.assert_close(bb.encode_frames(x), tiny_vit.encode_frames(x))


class Payload:
    "Unpickling this object creates a folder: the proof that a load ran code."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.makedirs, (self.marker,))


@pytest.mark.parametrize('extra', ['code/__torch__.py', 'constants.pkl'])
def test_pickle_payload_never_runs(tmp_path, tiny_vit, extra):
    "A torch.save zip with a pickled __reduce__ payload, dressed as TorchScript by an extra entry, is refused unexecuted."
    import zipfile
    marker, f = tmp_path / 'code-ran', tmp_path / 'evil.pt'
    torch.save({**tiny_vit.clip.state_dict(), 'x': Payload(marker)}, f)
    with zipfile.ZipFile(f, 'a') as z:
        top = z.namelist()[0].split('/')[0]
        z.writestr(f'{top}/{extra}', 'def forward(self): pass\n')
    with pytest.raises(Exception) as e:
        CLIPBackbone('m2df-tiny-vit', str(f))
    assert not marker.exists(), 'loading the file ran its pickled payload'
    assert isinstance(e.value, ValueError) and re.search(r'not a weights file: .*evil\.pt .*TorchScript', str(e.value)), e.value
    plain = tmp_path / 'plain.pt'                                   # the same payload without the disguise
    torch.save({'x': Payload(marker)}, plain)
    with pytest.raises(ValueError, match='not a weights file: .*plain.pt .*weights_only=True'):
        load_clip_model('m2df-tiny-vit', str(plain))
    assert not marker.exists()


@pytest.mark.parametrize('write,why', [
    (lambda p: p.write_text('hello'), 'torch.load with weights_only=True'),
    (lambda p: torch.save([torch.zeros(1)], p), 'a list, not a state dict'),
    (lambda p: torch.save({}, p), 'an empty dict'),
    (lambda p: torch.save({'a': 1, 'b': torch.zeros(1)}, p), "1 of its 2 entries are not named tensors, e.g. 'a'"),
    (lambda p: torch.save({'state_dict': {'a': 'text'}}, p), 'not named tensors'),
])
def test_not_a_weights_file_says_so(tmp_path, write, why):
    f = tmp_path / 'w.pt'
    write(f)
    with pytest.raises(encoders.NotAWeightsFile) as e: load_clip_model('m2df-tiny-vit', str(f))
    msg = str(e.value)
    assert msg.startswith(f'not a weights file: {f} (') and why in msg and '\n' not in msg, msg
    (tmp_path / 'w.safetensors').write_bytes(b'\x00' * 64)
    with pytest.raises(encoders.NotAWeightsFile, match='not a weights file: .*w.safetensors .*safetensors cannot read it'):
        load_clip_model('m2df-tiny-vit', str(tmp_path / 'w.safetensors'))


# --- pretrained tags: downloaded when the host answers, a fast clear error when it does not (no test leaves this machine)

class FakeHub(http.server.BaseHTTPRequestHandler):
    "The two requests huggingface_hub makes for a file (HEAD for its metadata, GET for its bytes), served from `files`."
    files: dict = {}
    def _send(self, body):
        data = self.files.get(self.path)
        if data is None: self.send_response(404); self.end_headers(); return
        self.send_response(200)
        self.send_header('Content-Length', str(len(data))); self.send_header('ETag', '"%s"' % hashlib.sha256(data).hexdigest())
        self.send_header('X-Repo-Commit', 'b' * 40); self.end_headers()
        if body: self.wfile.write(data)
    def do_HEAD(self): self._send(False)
    def do_GET(self): self._send(True)
    def log_message(self, *a): pass


def set_endpoint(monkeypatch, url):
    "What HF_ENDPOINT=url does when set before huggingface_hub is imported."
    c = huggingface_hub.constants
    monkeypatch.setattr(c, 'HUGGINGFACE_CO_URL_TEMPLATE', c.HUGGINGFACE_CO_URL_TEMPLATE.replace(c.ENDPOINT, url))
    monkeypatch.setattr(c, 'ENDPOINT', url)


@pytest.fixture
def online_tag(tmp_path, monkeypatch, tiny_vit):
    "A pretrained tag of the tiny model whose Hugging Face repo a server on 127.0.0.1 serves; the machine counts as online."
    data = tmp_path / 'weights.safetensors'
    save_file({k: v.contiguous() for k, v in tiny_vit.clip.state_dict().items()}, str(data))
    FakeHub.files = {'/m2df/tiny-online/resolve/main/open_clip_model.safetensors': data.read_bytes()}
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, 'm2df-tiny-vit', {'onlinetag': dict(hf_hub='m2df/tiny-online/')})
    monkeypatch.setenv('HF_HUB_OFFLINE', '0')
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', False)
    set_endpoint(monkeypatch, f'http://127.0.0.1:{server.server_port}')
    yield server
    server.shutdown(); server.server_close()


def test_missing_tag_downloads_when_the_host_answers(tmp_path, online_tag, tiny_vit):
    cache = tmp_path / 'cache'
    assert find_cached_weights('m2df-tiny-vit', 'onlinetag', cache_dir=str(cache)) is None
    bb = CLIPBackbone('m2df-tiny-vit', 'onlinetag', cache_dir=str(cache)).eval()
    x = torch.randn(1, 2, 3, 56, 56)
    torch.testing.assert_close(bb.encode_frames(x), tiny_vit.encode_frames(x))
    assert find_cached_weights('m2df-tiny-vit', 'onlinetag', cache_dir=str(cache)) is not None   # now in open_clip's cache


@pytest.mark.parametrize('how', ['HF_HUB_OFFLINE', 'M2DF_DOWNLOAD=0', 'unreachable'])
def test_missing_tag_offline_fails_fast(tmp_path, online_tag, monkeypatch, how):
    "Offline, the error that names the missing files comes at once (no retries); a set offline flag opens no connection."
    if how == 'HF_HUB_OFFLINE':
        monkeypatch.setenv('HF_HUB_OFFLINE', '1'); monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    elif how == 'M2DF_DOWNLOAD=0': monkeypatch.setenv('M2DF_DOWNLOAD', '0')
    else:
        free = socket.socket(); free.bind(('127.0.0.1', 0)); port = free.getsockname()[1]; free.close()   # nothing listens
        set_endpoint(monkeypatch, f'http://127.0.0.1:{port}')
    if how != 'unreachable':
        def no_network(*a, **k): raise AssertionError(f'network access attempted: {a}')
        monkeypatch.setattr(socket.socket, 'connect', no_network)
    t = time.perf_counter()
    with pytest.raises(PretrainedWeightsMissing) as e:
        CLIPBackbone('m2df-tiny-vit', 'onlinetag', cache_dir=str(tmp_path / 'cache'))
    assert time.perf_counter() - t < 5
    msg = str(e.value)
    for part in ("'m2df-tiny-vit'", "'onlinetag'", 'm2df/tiny-online', 'not in the local cache', "pretrained='<path",
                 {'HF_HUB_OFFLINE': 'HF_HUB_OFFLINE is set', 'M2DF_DOWNLOAD=0': 'M2DF_DOWNLOAD=0 forbids',
                  'unreachable': 'is unreachable'}[how]):
        assert part in msg, (part, msg)
    assert not (tmp_path / 'cache').exists() or not any((tmp_path / 'cache').rglob('*.safetensors'))


def test_class_text_rows_do_not_depend_on_batching(tiny_vit):
    "A row is the same bits whatever other names were encoded with it (a resumed run fills its cache in another order)."
    names = ['juggling', 'surfing', 'archery', 'yoga', 'rowing', 'fencing', 'diving']
    a = ClassTextCache(tiny_vit)
    a(names[:2]); a(names[5:]); rows_a = a(names)                 # filled in three batches of different sizes
    b = ClassTextCache(tiny_vit)
    rows_b = b(names[::-1]).flip(0)                               # filled at once, in reverse order
    assert torch.equal(rows_a, rows_b)
    assert torch.equal(rows_a[3], tiny_vit.encode_text(['a photo of yoga'])[0])


def test_class_text_cache(tiny_vit):
    names = ['juggling', 'surfing', 'archery', 'yoga', 'rowing']
    cache = ClassTextCache(tiny_vit, 'a photo of {}')
    e = cache(names, torch.tensor([4, 1, 2]))
    assert e.shape == (3, 64) and cache.n_encoded == 3
    torch.testing.assert_close(e, tiny_vit.encode_text([f'a photo of {n}' for n in ('rowing', 'surfing', 'archery')]),
                               atol=1e-4, rtol=1e-4)
    again = cache(names, [4, 1, 2])
    assert torch.equal(again, e) and cache.n_encoded == 3         # hit: identical tensors, nothing encoded
    full = cache(names)
    assert full.shape == (5, 64) and cache.n_encoded == 5          # only the two new names were encoded
    assert torch.equal(full[[4, 1, 2]], e)
    # another list with overlapping names serves the same rows for the same names
    assert torch.equal(cache(['yoga', 'rowing']), full[[3, 4]])
    # another template never serves the first template's rows
    other = cache(names, [4, 1, 2], template='a video of a person {}')
    assert not torch.allclose(other, e)
    torch.testing.assert_close(other[0], tiny_vit.encode_text(['a video of a person rowing'])[0], atol=1e-4, rtol=1e-4)
    assert torch.equal(cache(names, [4, 1, 2]), e)


def test_class_text_cache_invalidated_by_new_weights(tmp_path):
    a, b = CLIPBackbone('m2df-tiny-vit').eval(), CLIPBackbone('m2df-tiny-vit').eval()
    cache = ClassTextCache(a)
    before = cache(['yoga', 'rowing'])
    a.load_state_dict(b.state_dict())                               # e.g. a checkpoint restored after the cache was filled
    after = cache(['yoga', 'rowing'])
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, b.encode_text(['a photo of yoga', 'a photo of rowing']), atol=1e-4, rtol=1e-4)


def test_class_text_cache_errors(tiny_vit):
    cache = ClassTextCache(tiny_vit)
    with pytest.raises(IndexError, match='out of range'):
        cache(['a', 'b'], [2])
    with pytest.raises(ValueError, match='prompt_template'):
        ClassTextCache(tiny_vit, 'a photo')
    with pytest.raises(ValueError, match='prompt_template'):
        cache(['a'], template='{} and {}')
    with pytest.raises(ValueError, match='no class names'):
        cache([])


@pytest.mark.parametrize('name,D', [('RN50', 1024), ('ViT-B-16', 512)])
def test_paper_backbones_build(name, D):
    "The paper's architectures build with random weights and have the paper's widths D."
    bb = CLIPBackbone(name, pretrained=None)
    assert (bb.dim, bb.image_size) == (D, 224)
    with torch.no_grad():
        assert bb.encode_frames(torch.randn(1, 2, 3, 224, 224)).shape == (1, 2, D)
    assert bb.encode_text(['a photo of juggling']).shape == (1, D)
    assert not any(isinstance(m, open_clip.transformer.QuickGELU) for m in bb.modules())
    assert {n.split('.')[1] for n, p in bb.named_parameters() if p.requires_grad} == {'visual'}
