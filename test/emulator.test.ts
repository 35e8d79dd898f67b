// The CUDA emulator (native/cuda/emu): its own self-test (small kernels for every feature the CUDA
// kernels may use, and the errors it must raise for kernels that are undefined on a GPU), and the
// emulator addon's report of itself. Both need `npm run build:emu`; without it they are skipped,
// saying so in their titles. The CUDA ops themselves are tested on it by the backend suites.
import { expect } from 'chai';
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import { EMULATOR_ADDON, EMULATOR_SELFTEST, loadEmulator } from '../lib/emulator';

const notBuilt = 'skipped: not built (npm run build:emu)';

describe('CUDA emulator', function () {
  const hasSelftest = fs.existsSync(EMULATOR_SELFTEST);
  it(hasSelftest ? 'passes its self-test (la_cuda_emu_selftest)' : `self-test ${notBuilt}`, function () {
    if (!hasSelftest) this.skip();
    const r = spawnSync(EMULATOR_SELFTEST, [], { encoding: 'utf8', timeout: 120_000 });
    const output = `${r.stdout ?? ''}${r.stderr ?? ''}`;
    expect(r.error, String(r.error)).to.equal(undefined);
    expect(r.status, output).to.equal(0);
    expect(output).to.contain('all checks passed');
  });

  const hasAddon = fs.existsSync(EMULATOR_ADDON);
  it(hasAddon ? 'addon reports one emulated CUDA device' : `addon ${notBuilt}`, function () {
    if (!hasAddon) this.skip();
    const emu = loadEmulator();
    expect(emu).to.not.equal(null);
    const cuda = emu!.capabilities().cuda;
    expect(cuda.compiled).to.equal(true);
    expect(cuda.available).to.equal(true);
    expect(cuda.devices).to.equal(1);
    expect(cuda.reason).to.contain('CUDA emulator');
  });
});
