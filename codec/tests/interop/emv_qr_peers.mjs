// Independent EMV QR implementations, for codec/tests/emv_qr_interop.rs.
//
//   node emv_qr_peers.mjs generate N   N payloads from promptpay-qr and pix-utils, one JSON
//                                      object a line: {library, payload, expect}
//   node emv_qr_peers.mjs validate     payloads on stdin (one a line) parsed by pix-utils;
//                                      one JSON object a line: {ok, fields | error}
import generatePromptPay from 'promptpay-qr';
import { createStaticPix, parsePix, hasError } from 'pix-utils';
import { createInterface } from 'node:readline';

// A small deterministic generator, so every run checks the same payloads.
let state = 0x2545f491;
const next = () => { state = (Math.imul(state, 1103515245) + 12345) >>> 0; return state; };
const pick = (items) => items[next() % items.length];

const names = ['FULANO DE TAL', 'PADARIA DO ZE', 'MERCADO CENTRAL', 'CAFE AURORA', 'LOJA 42'];
const cities = ['SAO PAULO', 'RIO DE JANEIRO', 'CURITIBA', 'RECIFE'];

function generate(count) {
  for (let i = 0; i < count; i++) {
    const cents = 1 + (next() % 999999);
    const amount = cents / 100;
    if (i % 2 === 0) {
      const target = i % 4 === 0 ? `08${String(10000000 + (next() % 89999999))}` : String(1000000000000 + (next() % 8999999999999));
      const payload = generatePromptPay(target, { amount });
      console.log(JSON.stringify({ library: 'promptpay-qr', payload, expect: { currency: 764, country: 'TH', amount_minor: Math.round(amount * 100), guid_prefix: 'A0000006770101' } }));
    } else {
      const pix = createStaticPix({
        merchantName: pick(names),
        merchantCity: pick(cities),
        pixKey: `key${next() % 100000}@example.com`,
        infoAdicional: `pedido ${next() % 10000}`,
        transactionAmount: amount,
      });
      if (hasError(pix)) throw new Error(JSON.stringify(pix));
      const payload = pix.toBRCode();
      const parsed = parsePix(payload);
      console.log(JSON.stringify({ library: 'pix-utils', payload, expect: { currency: 986, country: 'BR', amount_minor: Math.round(parsed.transactionAmount * 100), name: parsed.merchantName, city: parsed.merchantCity, guid: 'br.gov.bcb.pix' } }));
    }
  }
}

async function validate() {
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line) continue;
    const parsed = parsePix(line);
    if (hasError(parsed)) {
      console.log(JSON.stringify({ ok: false, error: parsed }));
    } else {
      console.log(JSON.stringify({ ok: true, fields: { name: parsed.merchantName, city: parsed.merchantCity, key: parsed.pixKey, amount: parsed.transactionAmount, currency: parsed.transactionCurrency, country: parsed.countryCode, txid: parsed.txid } }));
    }
  }
}

const [mode, count] = process.argv.slice(2);
if (mode === 'generate') generate(Number(count ?? 100));
else if (mode === 'validate') await validate();
else { console.error('usage: emv_qr_peers.mjs generate N | validate'); process.exit(2); }
