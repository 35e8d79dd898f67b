// PyTorch checkpoints as torch.save writes them (zip format, PyTorch >= 1.6): `<name>/data.pkl`,
// a pickle of the state dict whose tensors refer by persistent id to storages `<name>/data/<key>`,
// each a stored (uncompressed) zip entry of raw little-endian elements. This finds where every
// tensor's bytes lie so that loaders can map them; nothing of the tensors is read here.
// (Free of the native addon so tools can use it.)
import { bytesOf } from '../bounds';
import { PyDict, PyValue, StorageDType, TensorRef, describe, unpickle } from './pickle';
import { ZipArchive, ZipEntry, readEntry, readZip } from './zip';

export const ELEM_BYTES: Record<StorageDType, number> = { F32: 4, F16: 2, BF16: 2 };

export interface TorchTensor {
  name: string;
  dtype: StorageDType;
  shape: number[];
  /** absolute offset of the first element in the file */
  byteOffset: number;
  byteLength: number;
  /** the zip entry of its storage */
  storage: string;
}

export interface TorchCheckpoint {
  path: string;
  zip: ZipArchive;
  /** the state dict's tensors, in the pickle's order */
  tensors: Map<string, TorchTensor>;
}

/** Reads the zip directory and the pickle of `path` and locates every tensor of its state dict.
 *  `what` names the kind of file in errors ('a PyTorch checkpoint', 'an adapter .pth'). */
export function readTorchCheckpoint(path: string, what = 'a PyTorch checkpoint'): TorchCheckpoint {
  const zip = readZip(path, what);
  // torch.save puts every entry under one folder named after the file: find its data.pkl
  const pickles = [...zip.entries.keys()].filter((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (pickles.length !== 1)
    throw new Error(
      `${path} is not ${what}: ${pickles.length ? `${pickles.length} data.pkl entries` : 'no <name>/data.pkl entry'} in the zip ` +
        `(torch.save's format; a TorchScript archive or another zip file is not a state dict)`,
    );
  const prefix = pickles[0].slice(0, -'data.pkl'.length);
  const root = unpickle(readEntry(zip, zip.entries.get(pickles[0])!, 64 * 1024 * 1024), `${path} (${pickles[0]})`);
  if (!(root instanceof PyDict)) throw new Error(`${path}: the checkpoint holds ${describe(root)}, not a state dict (a dict of tensors)`);

  const tensors = new Map<string, TorchTensor>();
  for (const [key, value] of root.entries) {
    const name = String(key);
    if (!(value instanceof TensorRef))
      throw new Error(`${path}: state dict entry ${JSON.stringify(name)} is ${describe(value as PyValue)}, not a tensor`);
    tensors.set(name, locate(zip, prefix, name, value));
  }
  return { path, zip, tensors };
}

/** Where tensor `name` lies: its storage entry checked against the storage's declared size, the
 *  view inside the storage, and the layout (contiguous only). */
function locate(zip: ZipArchive, prefix: string, name: string, t: TensorRef): TorchTensor {
  const path = zip.path;
  const s = t.storage;
  const elem = ELEM_BYTES[s.dtype];
  const entryName = `${prefix}data/${s.key}`;
  const entry: ZipEntry | undefined = zip.entries.get(entryName);
  if (!entry) throw new Error(`${path}: tensor ${name}: its storage ${entryName} is missing from the zip`);
  if (BigInt(entry.size) !== bytesOf([s.numel], elem))
    throw new Error(
      `${path}: tensor ${name}: storage ${entryName} holds ${entry.size} bytes but the pickle declares ${s.numel} ${s.dtype} elements (${s.numel * elem} bytes)`,
    );
  if (entry.method !== 0)
    throw new Error(`${path}: tensor ${name}: storage ${entryName} is compressed (method ${entry.method}); torch.save stores tensors uncompressed, which loading requires`);
  if (t.shape.some((d) => d < 0)) throw new Error(`${path}: tensor ${name} has a negative size (${t.shape})`);
  if (t.storageOffset < 0) throw new Error(`${path}: tensor ${name} has a negative storage offset ${t.storageOffset}`);
  // contiguous (row-major) only: each stride is the product of the sizes after it (size-1 dims any)
  let expect = 1;
  for (let i = t.shape.length - 1; i >= 0; i--) {
    if (t.shape[i] !== 1 && t.stride[i] !== expect)
      throw new Error(
        `${path}: tensor ${name} of size (${t.shape}) has stride (${t.stride}), not contiguous; only contiguous tensors are supported ` +
          `(save tensor.contiguous())`,
      );
    expect *= t.shape[i];
  }
  const numel = bytesOf(t.shape, 1);
  if (BigInt(t.storageOffset) + numel > BigInt(s.numel))
    throw new Error(
      `${path}: tensor ${name} of size (${t.shape}) at offset ${t.storageOffset} reaches past its storage of ${s.numel} elements`,
    );
  return {
    name,
    dtype: s.dtype,
    shape: t.shape,
    byteOffset: entry.dataOffset + t.storageOffset * elem,
    byteLength: Number(numel) * elem,
    storage: entryName,
  };
}
