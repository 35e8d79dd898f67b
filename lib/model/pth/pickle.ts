// A restricted unpickler: exactly the subset of the pickle protocol that torch.save writes for a
// state dict of dense tensors, and nothing more. A checkpoint is data, never code: the only
// globals it may name are the OrderedDict class, torch's tensor-rebuild function, the
// F32/F16/BF16 storage classes and torch.device, and REDUCE may call only the first two and the
// last. Any other opcode or global is refused with an error naming it. The stack machine never
// recurses and every size it reads is checked against the bytes that remain.
// (Free of the native addon so tools can use it.)

/** The storage element types a checkpoint may hold. */
export type StorageDType = 'F32' | 'F16' | 'BF16';

export const STORAGE_CLASSES: Record<string, StorageDType> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
};

/** A global the pickle named (only the allowed ones are ever built). */
export class PyGlobal {
  constructor(readonly module: string, readonly name: string) {}
  get qualified(): string {
    return `${this.module}.${this.name}`;
  }
}

/** A dict (or OrderedDict) with its entries in order. */
export class PyDict {
  readonly entries = new Map<string | number, PyValue>();
}

/** A persistent storage id: ('storage', <storage class>, key, location, numel). */
export class StorageRef {
  constructor(readonly dtype: StorageDType, readonly key: string, readonly location: string, readonly numel: number) {}
}

/** torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks). */
export class TensorRef {
  constructor(
    readonly storage: StorageRef,
    readonly storageOffset: number,
    readonly shape: number[],
    readonly stride: number[],
  ) {}
}

export type PyValue = null | boolean | number | string | PyValue[] | PyDict | PyGlobal | StorageRef | TensorRef | Mark;

/** The MARK sentinel on the stack. */
class Mark {}
const MARK = new Mark();

const ALLOWED_GLOBALS = new Set([
  'collections.OrderedDict',
  'torch._utils._rebuild_tensor_v2',
  'torch.FloatStorage',
  'torch.HalfStorage',
  'torch.BFloat16Storage',
  'torch.device',
]);

/** Names of the opcodes this reader refuses, so that errors say what a file tried to do. */
const OTHER_OPCODES: Record<number, string> = {
  0x63: 'GLOBAL',
  0x69: 'INST',
  0x6f: 'OBJ',
  0x81: 'NEWOBJ',
  0x92: 'NEWOBJ_EX',
  0x82: 'EXT1',
  0x83: 'EXT2',
  0x84: 'EXT4',
  0x50: 'PERSID',
  0x49: 'INT',
  0x4c: 'LONG',
  0x46: 'FLOAT',
  0x47: 'BINFLOAT',
  0x53: 'STRING',
  0x54: 'BINSTRING',
  0x55: 'SHORT_BINSTRING',
  0x56: 'UNICODE',
  0x42: 'BINBYTES',
  0x43: 'SHORT_BINBYTES',
  0x8e: 'BINBYTES8',
  0x96: 'BYTEARRAY8',
  0x97: 'NEXT_BUFFER',
  0x98: 'READONLY_BUFFER',
  0x8d: 'BINUNICODE8',
  0x5d: 'EMPTY_LIST',
  0x6c: 'LIST',
  0x61: 'APPEND',
  0x65: 'APPENDS',
  0x64: 'DICT',
  0x8f: 'EMPTY_SET',
  0x90: 'ADDITEMS',
  0x91: 'FROZENSET',
  0x8b: 'LONG4',
  0x30: 'POP',
  0x31: 'POP_MARK',
  0x32: 'DUP',
  0x67: 'GET',
  0x70: 'PUT',
};

/** Bounds on what a pickle may build (a state dict of a 405B model has a few thousand entries). */
export const PICKLE_LIMITS = { stack: 1 << 20, memo: 1 << 20, marks: 64, string: 1 << 20, dims: 16 } as const;

/**
 * Unpickles `data` (the data.pkl of a checkpoint) into plain values; `file` names it in errors.
 * Throws on anything outside the subset, on malformed input and on exceeded bounds.
 */
export function unpickle(data: Buffer, file: string): PyValue {
  const stack: PyValue[] = [];
  const marks: number[] = [];
  const memo = new Map<number, PyValue>();
  let p = 0;
  let op = 0;
  let at = 0; // where the current opcode started
  const fail = (why: string) => new Error(`${file}: ${why} (pickle opcode 0x${op.toString(16).padStart(2, '0')} at byte ${at})`);
  const need = (n: number) => {
    if (p + n > data.length) throw fail(`the pickle ends in the middle of an opcode (truncated or corrupt)`);
  };
  const pop = (): PyValue => {
    const floor = marks.length ? marks[marks.length - 1] : 0; // a MARK's items are popped only by it
    if (stack.length <= floor) throw fail('pops an empty stack (malformed pickle)');
    return stack.pop()!;
  };
  const push = (v: PyValue) => {
    if (stack.length >= PICKLE_LIMITS.stack) throw fail(`the stack grows past ${PICKLE_LIMITS.stack} items`);
    stack.push(v);
  };
  const popMark = (): PyValue[] => {
    const m = marks.pop();
    if (m === undefined) throw fail('no MARK to pop to (malformed pickle)');
    return stack.splice(m);
  };
  const str = (n: number): string => {
    if (n > PICKLE_LIMITS.string) throw fail(`a string of ${n} bytes is longer than the ${PICKLE_LIMITS.string} allowed`);
    need(n);
    const s = data.toString('utf8', p, p + n);
    p += n;
    return s;
  };
  const line = (): string => {
    const end = data.indexOf(0x0a, p);
    if (end < 0 || end - p > 256) throw fail('a GLOBAL name is not terminated by a newline within 256 bytes');
    const s = data.toString('utf8', p, end);
    p = end + 1;
    return s;
  };
  const global = (module: string, name: string): PyGlobal => {
    const q = `${module}.${name}`;
    if (!ALLOWED_GLOBALS.has(q))
      throw fail(
        `refuses the global ${JSON.stringify(q)}: a checkpoint is data, never code; only ${[...ALLOWED_GLOBALS].join(', ')} are allowed`,
      );
    return new PyGlobal(module, name);
  };
  const memoPut = (k: number) => {
    if (stack.length === 0) throw fail('memoizes an empty stack');
    if (memo.size >= PICKLE_LIMITS.memo && !memo.has(k)) throw fail(`the memo grows past ${PICKLE_LIMITS.memo} entries`);
    memo.set(k, stack[stack.length - 1]);
  };
  const memoGet = (k: number) => {
    if (!memo.has(k)) throw fail(`reads memo entry ${k}, which was never stored`);
    push(memo.get(k)!);
  };
  const int = (v: PyValue, what: string): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw fail(`${what} must be an integer, got ${describe(v)}`);
    return v;
  };
  const intTuple = (v: PyValue, what: string): number[] => {
    if (!Array.isArray(v)) throw fail(`${what} must be a tuple, got ${describe(v)}`);
    if (v.length > PICKLE_LIMITS.dims) throw fail(`${what} has ${v.length} dimensions, more than ${PICKLE_LIMITS.dims}`);
    return v.map((x, i) => int(x, `${what}[${i}]`));
  };
  const reduce = (fn: PyValue, args: PyValue): PyValue => {
    if (!(fn instanceof PyGlobal)) throw fail(`REDUCE calls ${describe(fn)}, not an allowed global`);
    if (!Array.isArray(args)) throw fail(`REDUCE of ${fn.qualified} has arguments ${describe(args)}, not a tuple`);
    switch (fn.qualified) {
      case 'collections.OrderedDict':
        if (args.length !== 0) throw fail('OrderedDict is rebuilt with arguments; only OrderedDict() is supported');
        return new PyDict();
      case 'torch.device':
        if (args.length < 1 || typeof args[0] !== 'string') throw fail('torch.device needs a device name');
        return args[0];
      case 'torch._utils._rebuild_tensor_v2': {
        // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
        if (args.length < 6 || args.length > 7) throw fail(`_rebuild_tensor_v2 takes 6 or 7 arguments, got ${args.length}`);
        const [storage, offset, size, stride] = args;
        if (!(storage instanceof StorageRef)) throw fail(`_rebuild_tensor_v2's storage is ${describe(storage)}, not a persistent storage`);
        const shape = intTuple(size, 'the tensor size');
        const strides = intTuple(stride, 'the tensor stride');
        if (shape.length !== strides.length) throw fail(`a tensor of size (${shape}) has stride (${strides})`);
        return new TensorRef(storage, int(offset, 'the storage offset'), shape, strides);
      }
      default:
        throw fail(`REDUCE may not call ${fn.qualified}: only collections.OrderedDict, torch._utils._rebuild_tensor_v2 and torch.device are called`);
    }
  };

  while (true) {
    at = p;
    need(1);
    op = data[p++];
    switch (op) {
      case 0x80: // PROTO
        need(1);
        if (data[p] < 2 || data[p] > 5) throw fail(`pickle protocol ${data[p]} is not supported (torch.save writes 2)`);
        p += 1;
        break;
      case 0x95: {
        // FRAME: a length prefix only (protocol 4); the bytes follow inline
        need(8);
        const n = data.readBigUInt64LE(p);
        p += 8;
        if (n > BigInt(data.length - p)) throw fail(`a frame of ${n} bytes runs past the end of the pickle`);
        break;
      }
      case 0x2e: // STOP
        if (stack.length !== 1 || marks.length) throw fail(`STOP with ${stack.length} values on the stack (malformed pickle)`);
        if (p !== data.length) throw new Error(`${file}: ${data.length - p} bytes follow the pickle's STOP (corrupt file)`);
        return stack[0];
      case 0x7d: // EMPTY_DICT
        push(new PyDict());
        break;
      case 0x29: // EMPTY_TUPLE
        push([]);
        break;
      case 0x28: // MARK
        if (marks.length >= PICKLE_LIMITS.marks) throw fail(`MARKs nest deeper than ${PICKLE_LIMITS.marks}`);
        marks.push(stack.length);
        break;
      case 0x58: // BINUNICODE
        need(4);
        p += 4;
        push(str(data.readUInt32LE(p - 4)));
        break;
      case 0x8c: // SHORT_BINUNICODE
        need(1);
        p += 1;
        push(str(data[p - 1]));
        break;
      case 0x4a: // BININT
        need(4);
        push(data.readInt32LE(p));
        p += 4;
        break;
      case 0x4b: // BININT1
        need(1);
        push(data[p++]);
        break;
      case 0x4d: // BININT2
        need(2);
        push(data.readUInt16LE(p));
        p += 2;
        break;
      case 0x8a: {
        // LONG1: n bytes of two's complement, little-endian
        need(1);
        const n = data[p++];
        if (n > 8) throw fail(`an integer of ${n} bytes is out of range`);
        need(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(data[p + i]);
        if (n > 0 && data[p + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
        p += n;
        if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) throw fail(`the integer ${v} is out of range`);
        push(Number(v));
        break;
      }
      case 0x4e: // NONE
        push(null);
        break;
      case 0x88: // NEWTRUE
        push(true);
        break;
      case 0x89: // NEWFALSE
        push(false);
        break;
      case 0x74: // TUPLE
        push(popMark());
        break;
      case 0x85: // TUPLE1
        push([pop()]);
        break;
      case 0x86: {
        // TUPLE2
        const b = pop();
        push([pop(), b]);
        break;
      }
      case 0x87: {
        // TUPLE3
        const c = pop();
        const b = pop();
        push([pop(), b, c]);
        break;
      }
      case 0x63: // GLOBAL module\nname\n
        push(global(line(), line()));
        break;
      case 0x93: {
        // STACK_GLOBAL (protocol 4)
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') throw fail('STACK_GLOBAL needs two strings');
        push(global(module, name));
        break;
      }
      case 0x52: {
        // REDUCE
        const args = pop();
        push(reduce(pop(), args));
        break;
      }
      case 0x51: {
        // BINPERSID: ('storage', <storage class>, key, location, numel)
        const pid = pop();
        if (!Array.isArray(pid) || pid.length !== 5 || pid[0] !== 'storage')
          throw fail(`a persistent id must be ('storage', class, key, location, numel), got ${describe(pid)}`);
        const [, cls, key, location, numel] = pid;
        if (!(cls instanceof PyGlobal) || cls.module !== 'torch' || !(cls.name in STORAGE_CLASSES))
          throw fail(`a storage of type ${describe(cls)} is not supported (only FloatStorage, HalfStorage and BFloat16Storage)`);
        if (typeof key !== 'string' || !/^[0-9A-Za-z_]{1,64}$/.test(key)) throw fail(`a storage key must be a short name, got ${describe(key)}`);
        if (typeof location !== 'string') throw fail(`a storage location must be a string, got ${describe(location)}`);
        const n = int(numel, 'a storage size');
        if (n < 0) throw fail(`a storage size is negative (${n})`);
        push(new StorageRef(STORAGE_CLASSES[cls.name], key, location, n));
        break;
      }
      case 0x62: {
        // BUILD: only an OrderedDict's instance dict (state_dict()'s _metadata), which is ignored
        const state = pop();
        const obj = stack[stack.length - 1];
        if (!(obj instanceof PyDict) || !(state instanceof PyDict || state === null))
          throw fail(`BUILD sets the state of ${describe(obj)}; only an OrderedDict's attributes are accepted`);
        break;
      }
      case 0x73: {
        // SETITEM
        const v = pop();
        const k = pop();
        setItem(stack[stack.length - 1], k, v);
        break;
      }
      case 0x75: {
        // SETITEMS
        const items = popMark();
        if (items.length % 2) throw fail('SETITEMS with an odd number of items');
        const d = stack[stack.length - 1];
        for (let i = 0; i < items.length; i += 2) setItem(d, items[i], items[i + 1]);
        break;
      }
      case 0x71: // BINPUT
        need(1);
        memoPut(data[p++]);
        break;
      case 0x72: // LONG_BINPUT
        need(4);
        memoPut(data.readUInt32LE(p));
        p += 4;
        break;
      case 0x94: // MEMOIZE
        memoPut(memo.size);
        break;
      case 0x68: // BINGET
        need(1);
        memoGet(data[p++]);
        break;
      case 0x6a: // LONG_BINGET
        need(4);
        memoGet(data.readUInt32LE(p));
        p += 4;
        break;
      default: {
        const name = OTHER_OPCODES[op];
        throw fail(
          `${name ? `opcode ${name}` : 'an unknown opcode'} is not accepted: a checkpoint is data, never code, and this reader takes only what torch.save writes for tensors`,
        );
      }
    }
  }

  function setItem(d: PyValue | undefined, k: PyValue, v: PyValue): void {
    if (!(d instanceof PyDict)) throw fail(`sets an item on ${describe(d ?? null)}, not a dict`);
    if (typeof k !== 'string' && typeof k !== 'number') throw fail(`a dict key must be a string or an integer, got ${describe(k)}`);
    if (v instanceof Mark) throw fail('a MARK is stored as a value');
    d.entries.set(k, v);
  }
}

/** A short description of a value for error messages. */
export function describe(v: PyValue): string {
  if (v === null) return 'None';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v);
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return `a tuple of ${v.length}`;
  if (v instanceof PyDict) return `a dict of ${v.entries.size}`;
  if (v instanceof PyGlobal) return v.qualified;
  if (v instanceof StorageRef) return `a ${v.dtype} storage`;
  if (v instanceof TensorRef) return `a tensor of size (${v.shape})`;
  return 'a MARK';
}
