// The wsgate browser SDK (ES module). Seed: replaced by the SDK itself.
export class Wsgate {}
