// Image-classification data: folder trees and JSON/JSONL lists, labels, and clear errors naming
// the folder, file or record.
import { expect } from 'chai';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadClassifyData } from '../lib/data/classify';
import { IndexBatcher } from '../lib/data/alpaca';
import { dataPath } from './util/paths';

function errorOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('expected an error');
}

describe('classification data', function () {
  let dir: string;
  const touch = (...parts: string[]) => {
    const f = path.join(dir, ...parts);
    fs.mkdirSync(path.dirname(f), { recursive: true });
    fs.writeFileSync(f, 'x');
    return f;
  };
  beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), 'la-cls-data-'))));
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('reads a folder tree: classes sorted, files sorted, hidden entries skipped, nested files kept', () => {
    touch('tree', 'zebra', 'b.png');
    touch('tree', 'zebra', 'a.png');
    touch('tree', 'Ant', 'x.jpg');
    touch('tree', 'cat', 'sub', 'y.webp');
    touch('tree', 'cat', '.DS_Store');
    touch('tree', '.git', 'HEAD');
    touch('tree', 'README.md'); // a file beside the class folders is not a class
    const d = loadClassifyData(path.join(dir, 'tree'));
    expect(d.labels).to.deep.equal(['Ant', 'cat', 'zebra']);
    expect(d.examples.map((e) => [e.image, e.label])).to.deep.equal([
      [path.join('Ant', 'x.jpg'), 0],
      [path.join('cat', 'sub', 'y.webp'), 1],
      [path.join('zebra', 'a.png'), 2],
      [path.join('zebra', 'b.png'), 2],
    ]);
    expect(d.examples[3].file).to.equal(path.join(dir, 'tree', 'zebra', 'b.png'));
  });

  it('reads JSONL and JSON lists with names or indices, paths relative to the list or --image-root', () => {
    touch('imgs', 'a.png');
    touch('imgs', 'b.png');
    const jsonl = path.join(dir, 'imgs', 'list.jsonl');
    fs.writeFileSync(jsonl, '{"image": "a.png", "label": "dog"}\n\n{"image": "b.png", "label": "cat"}\n');
    const d = loadClassifyData(jsonl);
    expect(d.labels).to.deep.equal(['cat', 'dog']);
    expect(d.examples.map((e) => [e.image, e.label, e.file])).to.deep.equal([
      ['a.png', 1, path.join(dir, 'imgs', 'a.png')],
      ['b.png', 0, path.join(dir, 'imgs', 'b.png')],
    ]);
    const json = path.join(dir, 'list.json');
    fs.writeFileSync(json, JSON.stringify([{ image: 'a.png', label: 3 }, { image: 'b.png', label: 1 }]));
    const e = loadClassifyData(json, { imageRoot: path.join(dir, 'imgs') });
    expect(e.labels).to.deep.equal(['0', '1', '2', '3']);
    expect(e.examples.map((x) => x.label)).to.deep.equal([3, 1]);
    // a trained head's labels fix the indices
    const f = loadClassifyData(jsonl, { labels: ['dog', 'bird', 'cat'] });
    expect(f.labels).to.deep.equal(['dog', 'bird', 'cat']);
    expect(f.examples.map((x) => x.label)).to.deep.equal([0, 2]);
  });

  it('reads the Fashion-MNIST lists (10 classes, 1000 test images)', () => {
    const d = loadClassifyData(dataPath('fashion-mnist', 'test.jsonl'), { imageRoot: dataPath('fashion-mnist', 'images') });
    expect(d.examples).to.have.length(1000);
    expect(d.labels).to.have.length(10);
    expect(d.labels[0]).to.equal('Ankle boot'); // names sorted, as a folder tree's would be
    expect(d.examples[0].file).to.equal(dataPath('fashion-mnist', 'images', 'test', '00000.png'));
  });

  it('bad data is a clear error naming the folder, file or record', () => {
    expect(errorOf(() => loadClassifyData(path.join(dir, 'nope')))).to.match(/nope does not exist/);
    fs.mkdirSync(path.join(dir, 'flat'));
    touch('flat', 'a.png');
    expect(errorOf(() => loadClassifyData(path.join(dir, 'flat')))).to.match(/flat: no class folder/);
    touch('tree', 'cat', 'a.png');
    fs.mkdirSync(path.join(dir, 'tree', 'dog'));
    expect(errorOf(() => loadClassifyData(path.join(dir, 'tree')))).to.match(/tree\/dog: the class folder 'dog' holds no image/);
    touch('tree', 'dog', 'b.png');
    expect(errorOf(() => loadClassifyData(path.join(dir, 'tree'), { labels: ['cat'] }))).to.match(/tree\/dog: unknown label 'dog' \(the head's labels are 'cat'\)/);

    const list = (name: string, text: string) => {
      const f = path.join(dir, name);
      fs.writeFileSync(f, text);
      return f;
    };
    touch('a.png');
    expect(errorOf(() => loadClassifyData(list('l1.jsonl', '{"image": "a.png", "label": "x"}\n{"image": "a.png"\n')))).to.match(/l1\.jsonl line 2 is not valid JSON/);
    expect(errorOf(() => loadClassifyData(list('l2.jsonl', '{"image": "a.png", "label": "x"}\n{"image": "a.png", "label": -1}\n')))).to.match(
      /l2\.jsonl line 2: "label" must be a class name or a class index/,
    );
    expect(errorOf(() => loadClassifyData(list('l3.jsonl', '{"label": "x"}\n')))).to.match(/l3\.jsonl line 1: "image" must be a non-empty string/);
    expect(errorOf(() => loadClassifyData(list('l4.json', '[{"image": "a.png", "label": "x"}, {"image": "missing.png", "label": "x"}]')))).to.match(
      /l4\.json record 1: image missing\.png not found/,
    );
    expect(errorOf(() => loadClassifyData(list('l5.jsonl', '{"image": "a.png", "label": "x"}\n{"image": "a.png", "label": 0}\n')))).to.match(
      /labels must be all class names or all class indices/,
    );
    expect(errorOf(() => loadClassifyData(list('l6.jsonl', '{"image": "a.png", "label": "zebra"}\n'), { labels: ['cat', 'dog'] }))).to.match(
      /l6\.jsonl line 1: unknown label 'zebra' \(the head's labels are 'cat', 'dog'\)/,
    );
    expect(errorOf(() => loadClassifyData(list('l7.jsonl', '{"image": "a.png", "label": 2}\n'), { labels: ['cat', 'dog'] }))).to.match(
      /l7\.jsonl line 1: label index 2 is outside 0\.\.1/,
    );
    expect(errorOf(() => loadClassifyData(list('l8.jsonl', '\n')))).to.match(/l8\.jsonl: no labelled image/);
    expect(errorOf(() => loadClassifyData(list('l9.json', '[3]')))).to.match(/l9\.json record 0: expected an object/);
  });

  it('IndexBatcher: seeded epochs over item indices, the last batch partial, restorable', () => {
    const b = new IndexBatcher(5, { batchSize: 2, seed: 7, shuffle: true });
    const epoch = [b.nextIndices(), b.nextIndices(), b.nextIndices()].map((x) => Array.from(x));
    expect(epoch.map((x) => x.length)).to.deep.equal([2, 2, 1]);
    expect(epoch.flat().sort()).to.deep.equal([0, 1, 2, 3, 4]);
    b.nextIndices();
    const s = b.state();
    const want = [b.nextIndices(), b.nextIndices()].map((x) => Array.from(x));
    const c = new IndexBatcher(5, { batchSize: 2, seed: 7, shuffle: true });
    c.restore(s);
    expect([c.nextIndices(), c.nextIndices()].map((x) => Array.from(x))).to.deep.equal(want);
    expect(() => new IndexBatcher(0, { batchSize: 2, seed: 0, shuffle: true })).to.throw(/at least one example/);
  });
});
