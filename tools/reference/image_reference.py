#!/usr/bin/env python3
"""Pillow reference of the image preprocessing (../shared/SPEC.md §7) for lib/image's tests.

Hugging Face's CLIPImageProcessor / ViTImageProcessor resize uint8 images with Pillow's
Image.resize (reducing_gap None), centre-crop (HF's center_crop, zero padding), rescale by 1/255 in
float64 then float32, and normalise (x - mean) / std in float32. This script applies Pillow and
numpy to crops of a real photo (bird.rgb, raw 224x224 RGB from ../shared/data/vision) and writes
the results to test/golden/image-preprocess.json, plus a JPEG and a WebP encoded by Pillow with
Pillow's decoding of them (to measure the decoders' difference). Needs only Pillow and numpy.

Usage (from the repository root):
    /usr/bin/python3 tools/reference/image_reference.py \
        --rgb ../shared/data/vision/bird.rgb --out test/golden/image-preprocess.json
"""
import argparse
import base64
import io
import json

import numpy as np
from PIL import Image

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
FILTERS = {'nearest': Image.NEAREST, 'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC,
           'lanczos': Image.LANCZOS, 'box': Image.BOX, 'hamming': Image.HAMMING}


def b64(a):
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode('ascii')


def center_crop(a, h, w):
    """HF's image_transforms.center_crop on (H, W, C)."""
    H, W = a.shape[:2]
    top, left = (H - h) // 2, (W - w) // 2
    if top >= 0 and left >= 0 and top + h <= H and left + w <= W:
        return a[top:top + h, left:left + w]
    nh, nw = max(h, H), max(w, W)
    out = np.zeros((nh, nw) + a.shape[2:], dtype=a.dtype)
    tp, lp = -(-(nh - H) // 2), -(-(nw - W) // 2)
    out[tp:tp + H, lp:lp + W] = a
    top, left = top + tp, left + lp
    return out[max(0, top):min(nh, top + h), max(0, left):min(nw, left + w)]


def normalise(a, mean, std):
    x = (a.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return x.transpose(2, 0, 1)  # (3, H, W)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rgb', required=True)
    ap.add_argument('--out', required=True)
    args = ap.parse_args()
    photo = np.frombuffer(open(args.rgb, 'rb').read(), dtype=np.uint8).reshape(224, 224, 3)
    src = lambda y, x, h, w: photo[y:y + h, x:x + w]  # noqa: E731

    cases = []
    # resize alone, every filter, shrinking and enlarging, landscape and portrait
    for name, (y, x, h, w), (oh, ow) in [
        ('bicubic', (10, 20, 61, 97), (17, 23)), ('bilinear', (10, 20, 61, 97), (24, 24)),
        ('lanczos', (40, 30, 61, 97), (17, 23)), ('box', (40, 30, 61, 97), (17, 23)),
        ('hamming', (40, 30, 61, 97), (17, 23)), ('nearest', (40, 30, 61, 97), (17, 23)),
        ('bicubic', (100, 100, 9, 13), (30, 40)), ('bilinear', (100, 100, 9, 13), (30, 40)),
        ('bicubic', (0, 0, 150, 37), (71, 11)), ('nearest', (0, 0, 9, 13), (31, 29)),
        ('bicubic', (5, 5, 50, 80), (20, 33)),
    ]:
        a = src(y, x, h, w)
        r = np.asarray(Image.fromarray(a).resize((ow, oh), FILTERS[name]))
        cases.append({'kind': 'resize', 'filter': name, 'src': [y, x, h, w], 'out': [oh, ow], 'pixels': b64(r)})

    # the CLIP pipeline: shortest edge 24 bicubic, centre crop 24, normalise
    for (y, x, h, w) in [(10, 20, 61, 97), (3, 50, 97, 61), (0, 0, 16, 16)]:
        a = src(y, x, h, w)
        short, long_ = (w, h) if w <= h else (h, w)
        ns, nl = 16, int(16 * long_ / short)
        size = (ns, nl) if w <= h else (nl, ns)  # (width, height)
        r = np.asarray(Image.fromarray(a).resize(size, Image.BICUBIC))
        c = center_crop(r, 16, 16)
        cases.append({'kind': 'clip', 'src': [y, x, h, w], 'size': 16, 'pixels': b64(normalise(c, CLIP_MEAN, CLIP_STD))})
    # the ViT pipeline: 24 x 24 bilinear, mean = std = 0.5
    a = src(10, 20, 61, 97)
    r = np.asarray(Image.fromarray(a).resize((16, 16), Image.BILINEAR))
    cases.append({'kind': 'vit', 'src': [10, 20, 61, 97], 'size': 16, 'pixels': b64(normalise(r, [0.5] * 3, [0.5] * 3))})
    # centre crop of a smaller image: zero padding
    for (h, w), (ch, cw) in [((20, 30), (24, 24)), ((25, 17), (24, 24)), ((9, 13), (12, 11))]:
        c = center_crop(src(60, 60, h, w), ch, cw)
        cases.append({'kind': 'crop', 'src': [60, 60, h, w], 'crop': [ch, cw], 'pixels': b64(c)})

    # encoded files and Pillow's decoding of them
    files = []
    a = src(30, 40, 24, 32)
    for fmt, opts in [('JPEG', {'quality': 90}), ('WEBP', {'quality': 80})]:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, fmt, **opts)
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert('RGB'))
        files.append({'format': fmt.lower(), 'bytes': base64.b64encode(buf.getvalue()).decode('ascii'),
                      'height': dec.shape[0], 'width': dec.shape[1], 'pixels': b64(dec)})

    with open(args.out, 'w') as f:
        json.dump({'source': 'bird.rgb (224x224 RGB)', 'generator': 'tools/reference/image_reference.py',
                   'pillow': Image.__version__, 'cases': cases, 'files': files}, f)
        f.write('\n')


if __name__ == '__main__':
    main()
