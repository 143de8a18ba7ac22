// A FetchX509SVID message to the PEM Node's TLS takes: the first SVID unless
// one is asked for by SPIFFE ID, the chain split from concatenated DER (leaf
// first), the bundle likewise, and malformed DER refused rather than guessed.

import { expect } from "chai";
import { create } from "@bufbuild/protobuf";
import { X509Certificate } from "node:crypto";
import { X509SVIDResponseSchema, X509SVIDSchema } from "../../../gen/spiffe/workload/workload_pb.js";
import { selectSvid, splitDer } from "../../../src/workload-api/x509-context.js";
import { parseEndpointSocket } from "../../../src/workload-api/endpoint-socket.js";
import { createAuthority } from "../../support/test-pki.js";

const der = (pem: string) => new Uint8Array(new X509Certificate(pem).raw);
const keyDer = (pem: string) => Buffer.from(pem.replace(/-----[A-Z ]+-----/g, "").replace(/\s+/g, ""), "base64");

describe("Workload API X.509 context", () => {
  it("takes the first SVID by default and the named one with a SPIFFE ID; chain leaf first, bundle as PEM", async () => {
    const root = await createAuthority();
    const intermediate = await root.intermediate();
    const a = await intermediate.issue({ uris: ["spiffe://spike.ist/a"] });
    const b = await root.issue({ uris: ["spiffe://spike.ist/b"] });
    const response = create(X509SVIDResponseSchema, {
      svids: [
        create(X509SVIDSchema, { spiffeId: "spiffe://spike.ist/a", x509Svid: Buffer.concat([der(a.certPem), der(intermediate.certPem)]), x509SvidKey: keyDer(a.keyPem), bundle: der(root.certPem) }),
        create(X509SVIDSchema, { spiffeId: "spiffe://spike.ist/b", x509Svid: der(b.certPem), x509SvidKey: keyDer(b.keyPem), bundle: der(root.certPem) }),
      ],
    });
    const first = selectSvid(response);
    expect(first.spiffeId).to.equal("spiffe://spike.ist/a");
    expect(first.certPem).to.equal(new X509Certificate(a.certPem).toString() + new X509Certificate(intermediate.certPem).toString());
    expect(first.bundlePem).to.equal(new X509Certificate(root.certPem).toString());
    expect(first.keyPem.replace(/\s+/g, "")).to.equal(a.keyPem.replace(/\s+/g, ""));
    expect(selectSvid(response, "spiffe://spike.ist/b").spiffeId).to.equal("spiffe://spike.ist/b");
    expect(() => selectSvid(response, "spiffe://spike.ist/c")).to.throw("no SVID for spiffe://spike.ist/c");
    expect(() => selectSvid(create(X509SVIDResponseSchema, {}))).to.throw("no X.509-SVID");
  });

  it("malformed DER is refused: truncated, or not a SEQUENCE", async () => {
    const cert = der((await createAuthority()).certPem);
    expect(() => splitDer(cert.subarray(0, cert.length - 1))).to.throw("truncated");
    expect(() => splitDer(new Uint8Array([0x04, 0x01, 0x00]))).to.throw("SEQUENCE");
    expect(splitDer(new Uint8Array())).to.deep.equal([]);
  });

  it("endpoint addresses: unix:///path and tcp://IP:port only", () => {
    expect(parseEndpointSocket("unix:///run/spire/agent.sock").target).to.equal("unix:///run/spire/agent.sock");
    expect(parseEndpointSocket("tcp://127.0.0.1:8081").target).to.equal("ipv4:127.0.0.1:8081");
    expect(parseEndpointSocket("tcp://[::1]:8081").target).to.equal("ipv6:[::1]:8081");
    for (const bad of ["/run/agent.sock", "unix://run/agent.sock", "tcp://agent:8081", "tcp://127.0.0.1:99999", "http://127.0.0.1:1"]) {
      expect(() => parseEndpointSocket(bad), bad).to.throw();
    }
  });
});
