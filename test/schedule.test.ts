// The learning-rate schedule (SPEC §4) against values worked out by hand.
import { expect } from 'chai';
import { learningRate, peakFromBase } from '../lib/train/schedule';

describe('learning-rate schedule', () => {
  it('peak lr = blr * effective batch / 256', () => {
    expect(peakFromBase(9e-3, 32)).to.be.closeTo(1.125e-3, 1e-15); // the paper: 9e-3 * 32 / 256
  });

  it('linear warmup, then half a cosine to 0', () => {
    const o = { peakLr: 1, totalSteps: 10, warmupSteps: 4, kind: 'cosine' as const };
    // warmup: (step + 1) / 4
    expect([0, 1, 2, 3].map((s) => learningRate(s, o))).to.deep.equal([0.25, 0.5, 0.75, 1]);
    // cosine over the 6 steps after warmup: 0.5 (1 + cos(pi (s - 4) / 6))
    expect(learningRate(4, o)).to.equal(1);
    expect(learningRate(5, o)).to.be.closeTo(0.9330127018922193, 1e-15); // (1 + cos(pi/6)) / 2
    expect(learningRate(7, o)).to.be.closeTo(0.5, 1e-15); // cos(pi/2) = 0
    expect(learningRate(9, o)).to.be.closeTo(0.0669872981077807, 1e-15); // (1 + cos(5pi/6)) / 2
    expect(learningRate(10, o)).to.be.closeTo(0, 1e-15);
  });

  it('constant stays at the peak; no warmup starts at the peak', () => {
    expect(learningRate(3, { peakLr: 0.1, totalSteps: 10, warmupSteps: 4, kind: 'constant' })).to.equal(0.1);
    expect(learningRate(0, { peakLr: 0.1, totalSteps: 10, warmupSteps: 0, kind: 'cosine' })).to.equal(0.1);
  });
});
