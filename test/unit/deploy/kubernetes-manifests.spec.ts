// deploy/kubernetes, rendered as kustomize would (test/support/kustomize-subset.ts):
// every core object validates against the Kubernetes OpenAPI schemas
// (kubernetes-models), every custom resource against the minimal vendored
// schemas in deploy/kubernetes/crd-schemas, and the references between them
// hold: ports and probe ports, labels and selectors, volume, secret and
// ConfigMap names, the SPIFFE IDs and the agent's configuration. No cluster
// runs here; this is what can be checked without one.

import { Ajv } from "ajv";
import { expect } from "chai";
import { readFile } from "node:fs/promises";
import path from "node:path";
import { parse as parseYaml } from "yaml";
import { SETTINGS } from "../../../src/config/config.js";
import { LIVENESS_SERVICE } from "../../../src/transport/health.js";
import { renderKustomization, type KubeObject } from "../../support/kustomize-subset.js";

const DIR = path.resolve("deploy/kubernetes");
/** Settings the manifests use that parallel work adds (issue 14: SVIDs from the Workload API). */
const SETTINGS_IN_FLIGHT = new Set(["NEXUS_SPIFFE_ENDPOINT_SOCKET"]);

/* eslint-disable @typescript-eslint/no-explicit-any -- manifests are untyped YAML; the schemas check their shape */
type Any = any;

interface Container {
  name: string;
  image: string;
  args?: string[];
  command?: string[];
  env?: Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>;
  ports?: Array<{ name: string; containerPort: number }>;
  volumeMounts?: Array<{ name: string; mountPath: string; readOnly?: boolean }>;
  readinessProbe?: Any;
  livenessProbe?: Any;
  startupProbe?: Any;
  resources?: Any;
  securityContext?: Any;
  restartPolicy?: string;
}

function matches(selector: Record<string, string> | undefined, labels: Record<string, string> | undefined): boolean {
  if (selector === undefined || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => labels?.[k] === v);
}

/** A pod IP for expanding $(POD_IP) the way the kubelet does. */
const SAMPLE_POD_IP = "10.1.2.3";

/** The container's settings as the process sees them: downward-API fields and $(VAR) references resolved. */
function envOf(c: Container): Map<string, string> {
  const fields: Record<string, string> = { "status.podIP": SAMPLE_POD_IP };
  const env = new Map<string, string>();
  for (const e of c.env ?? []) {
    const value = e.valueFrom?.fieldRef ? (fields[e.valueFrom.fieldRef.fieldPath] ?? "") : (e.value ?? "");
    env.set(e.name, value.replace(/\$\(([A-Z_][A-Z0-9_]*)\)/g, (_, name: string) => env.get(name) ?? `$(${name})`));
  }
  return env;
}

function portOf(listen: string): number {
  return Number(listen.slice(listen.lastIndexOf(":") + 1));
}

/** The volume mounted at the folder holding `file`, and the file's name inside it. */
function mountFor(c: Container, file: string): { volume: string; key: string } {
  const m = (c.volumeMounts ?? []).find((v) => path.dirname(file) === v.mountPath);
  expect(m, `${c.name}: nothing mounted at ${path.dirname(file)} for ${file}`).to.not.equal(undefined);
  return { volume: m!.name, key: path.basename(file) };
}

describe("Kubernetes manifests (deploy/kubernetes)", () => {
  let objects: KubeObject[];
  const one = (kind: string, name: string): Any => {
    const found = objects.filter((o) => o.kind === kind && o.metadata.name === name);
    expect(found, `${kind}/${name}`).to.have.length(1);
    return found[0];
  };

  before(async () => {
    objects = await renderKustomization(DIR);
  });

  it("renders the Namespace, the database, the server, its Service, PDB and NetworkPolicy, the SPIFFE IDs and the example workload", () => {
    const names = objects.map((o) => `${o.kind}/${o.metadata.name}`);
    expect(names).to.include.members([
      "Namespace/nexus",
      "Cluster/nexus-db",
      "ServiceAccount/nexus",
      "Deployment/nexus",
      "Service/nexus",
      "PodDisruptionBudget/nexus",
      "NetworkPolicy/nexus",
      "ClusterSPIFFEID/nexus-server",
      "ClusterSPIFFEID/nexus-superuser",
      "ClusterSPIFFEID/demo-workload",
      "ConfigMap/spike-agent-config",
      "Deployment/demo-workload",
    ]);
    expect(new Set(names).size, "no object twice").to.equal(names.length);
    for (const o of objects) if (o.kind !== "Namespace" && o.kind !== "ClusterSPIFFEID") expect(o.metadata.namespace, names.join()).to.equal("nexus");
  });

  it("every core object validates against the Kubernetes schemas (kubernetes-models)", async () => {
    let validated = 0;
    for (const o of objects.filter((x) => !x.apiVersion.includes(".") || x.apiVersion.includes("k8s.io"))) {
      const module = (await import(`kubernetes-models/${o.apiVersion}`)) as Record<string, new (data: unknown) => { validate(): void }>;
      const Model = module[o.kind];
      expect(Model, `kubernetes-models has no ${o.apiVersion} ${o.kind}`).to.be.a("function");
      expect(() => new Model(o).validate(), `${o.kind}/${o.metadata.name}`).to.not.throw();
      validated++;
    }
    expect(validated).to.be.at.least(8);
  });

  it("every custom resource validates against its vendored schema, and an unknown field is refused", async () => {
    const ajv = new Ajv({ allErrors: true, strict: false });
    const custom = objects.filter((o) => o.apiVersion.includes(".") && !o.apiVersion.includes("k8s.io"));
    expect(custom.map((o) => o.kind)).to.have.members(["Cluster", "ClusterSPIFFEID", "ClusterSPIFFEID", "ClusterSPIFFEID"]);
    for (const o of custom) {
      const file = path.join(DIR, "crd-schemas", `${o.apiVersion.replace("/", "_")}_${o.kind}.json`);
      const validate = ajv.compile(JSON.parse(await readFile(file, "utf8")));
      expect(validate(o), `${o.kind}/${o.metadata.name}: ${ajv.errorsText(validate.errors)}`).to.equal(true);
      const typo = structuredClone(o) as Any;
      typo.spec.instancess = 3;
      expect(validate(typo), "a misspelt field fails").to.equal(false);
    }
  });

  describe("the Nexus server", () => {
    let deployment: Any;
    let pod: Any;
    let nexus: Container;
    let env: Map<string, string>;
    before(() => {
      deployment = one("Deployment", "nexus");
      pod = deployment.spec.template;
      nexus = pod.spec.containers.find((c: Container) => c.name === "nexus");
      env = envOf(nexus);
    });

    it("runs 3 replicas whose labels every selector (Deployment, Service, PDB, NetworkPolicy, ClusterSPIFFEID) matches", () => {
      expect(deployment.spec.replicas).to.equal(3);
      const labels = pod.metadata.labels;
      expect(matches(deployment.spec.selector.matchLabels, labels), "Deployment selector").to.equal(true);
      expect(matches(one("Service", "nexus").spec.selector, labels), "Service selector").to.equal(true);
      expect(matches(one("PodDisruptionBudget", "nexus").spec.selector.matchLabels, labels), "PDB selector").to.equal(true);
      expect(one("PodDisruptionBudget", "nexus").spec.minAvailable).to.be.lessThan(3);
      expect(matches(one("NetworkPolicy", "nexus").spec.podSelector.matchLabels, labels), "NetworkPolicy podSelector").to.equal(true);
      const id = one("ClusterSPIFFEID", "nexus-server").spec;
      expect(matches(id.podSelector.matchLabels, labels), "ClusterSPIFFEID podSelector").to.equal(true);
      expect(id.namespaceSelector.matchLabels["kubernetes.io/metadata.name"]).to.equal(deployment.metadata.namespace);
      expect(id.spiffeIDTemplate).to.equal("spiffe://{{ .TrustDomain }}/spike/nexus");
      // The example workload's pods are not selected by the server's selectors.
      const workloadLabels = one("Deployment", "demo-workload").spec.template.metadata.labels;
      expect(matches(one("Service", "nexus").spec.selector, workloadLabels)).to.equal(false);
      expect(pod.spec.serviceAccountName).to.equal(one("ServiceAccount", "nexus").metadata.name);
    });

    it("uses only known settings, each valid, and listens on the ports the container declares", () => {
      for (const [name, value] of env) {
        if (!name.startsWith("NEXUS_")) continue; // POD_IP: only an input to NEXUS_ADVERTISE_ADDRESS
        const setting = Object.values(SETTINGS).find((s) => s.env === name);
        expect(setting !== undefined || SETTINGS_IN_FLIGHT.has(name), `${name} is not a Nexus setting`).to.equal(true);
        if (setting !== undefined) expect(() => setting.parse(value), name).to.not.throw();
      }
      const ports = new Map((nexus.ports ?? []).map((p) => [p.name, p.containerPort]));
      expect(portOf(env.get("NEXUS_LISTEN")!)).to.equal(ports.get("grpc"));
      expect(portOf(env.get("NEXUS_CONNECT_LISTEN")!)).to.equal(ports.get("connect"));
      expect(portOf(env.get("NEXUS_HEALTH_LISTEN")!)).to.equal(ports.get("health"));
      expect(portOf(env.get("NEXUS_METRICS_LISTEN")!)).to.equal(ports.get("metrics"));
      expect(nexus.args).to.deep.equal(["serve"]);
    });

    it("advertises each pod's own IP on the gRPC port for peer unseal, and the NetworkPolicy lets the replicas dial each other there", () => {
      const grpc = nexus.ports!.find((p) => p.name === "grpc")!.containerPort;
      expect(env.get("NEXUS_ADVERTISE_ADDRESS")).to.equal(`${SAMPLE_POD_IP}:${grpc}`);
      const policy = one("NetworkPolicy", "nexus").spec;
      const labels = pod.metadata.labels;
      const peers = policy.egress.find((r: Any) => r.to.some((t: Any) => t.podSelector && matches(t.podSelector.matchLabels, labels)));
      expect(peers?.ports, "egress to the other replicas").to.deep.equal([{ port: grpc, protocol: "TCP" }]);
      expect(env.has("NEXUS_PEER_UNSEAL") ? env.get("NEXUS_PEER_UNSEAL") : "on").to.equal("on");
    });

    it("probes gRPC health on the health port: readiness the overall status, liveness (and startup) the liveness service", () => {
      const health = nexus.ports!.find((p) => p.name === "health")!.containerPort;
      expect(nexus.readinessProbe.grpc).to.deep.equal({ port: health, service: "" });
      expect(nexus.livenessProbe.grpc).to.deep.equal({ port: health, service: LIVENESS_SERVICE });
      expect(nexus.startupProbe.grpc).to.deep.equal({ port: health, service: LIVENESS_SERVICE });
    });

    it("the Service targets declared container ports, and the NetworkPolicy opens exactly the ports in use", () => {
      const ports = new Map((nexus.ports ?? []).map((p) => [p.name, p.containerPort]));
      for (const p of one("Service", "nexus").spec.ports) expect(ports.has(p.targetPort), `Service port ${p.name} -> ${p.targetPort}`).to.equal(true);
      const policy = one("NetworkPolicy", "nexus").spec;
      expect(policy.policyTypes).to.have.members(["Ingress", "Egress"]);
      const opened = policy.ingress.flatMap((r: Any) => r.ports.map((p: Any) => p.port));
      expect(opened).to.have.members([...ports.values()]);
      const cluster = one("Cluster", "nexus-db");
      const database = policy.egress.find((r: Any) => r.to.some((t: Any) => t.podSelector?.matchLabels?.["cnpg.io/cluster"] === cluster.metadata.name));
      expect(database?.ports, "egress to the CloudNativePG cluster").to.deep.equal([{ port: 5432, protocol: "TCP" }]);
      expect(policy.egress).to.have.length(3, "the other replicas (peer unseal), PostgreSQL and DNS only");
    });

    it("mounts every volume it declares: the database URL and CA from CloudNativePG's Secrets, the Workload API socket from the SPIFFE CSI driver", () => {
      const volumes = new Map<string, Any>(pod.spec.volumes.map((v: Any) => [v.name, v]));
      const mounted = new Set(nexus.volumeMounts!.map((m) => m.name));
      expect([...mounted]).to.have.members([...volumes.keys()]);
      const cluster = one("Cluster", "nexus-db").metadata.name;
      const url = mountFor(nexus, env.get("NEXUS_DATABASE_URL_FILE")!);
      expect(volumes.get(url.volume).secret.secretName).to.equal(`${cluster}-app`);
      expect(volumes.get(url.volume).secret.items).to.deep.include({ key: "uri", path: url.key });
      const ca = mountFor(nexus, env.get("NEXUS_DATABASE_CA_FILE")!);
      expect(volumes.get(ca.volume).secret.secretName).to.equal(`${cluster}-ca`);
      expect(volumes.get(ca.volume).secret.items).to.deep.include({ key: "ca.crt", path: ca.key });
      const socket = env.get("NEXUS_SPIFFE_ENDPOINT_SOCKET")!;
      expect(socket).to.equal("unix:///spiffe-workload-api/spire-agent.sock");
      const spiffe = mountFor(nexus, socket.replace(/^unix:\/\//, ""));
      expect(volumes.get(spiffe.volume).csi).to.deep.equal({ driver: "csi.spiffe.io", readOnly: true });
      expect(mountFor(nexus, path.join(env.get("NEXUS_DATA_DIR")!, "x")).volume).to.equal("data");
    });

    it("runs as non-root with a read-only root filesystem, no privilege escalation, no capabilities, and sized resources", () => {
      expect(pod.spec.securityContext.runAsNonRoot).to.equal(true);
      expect(pod.spec.securityContext.runAsUser).to.be.greaterThan(0);
      expect(nexus.securityContext).to.deep.equal({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ["ALL"] } });
      expect(nexus.resources.requests.cpu).to.be.a("string");
      expect(nexus.resources.requests.memory).to.be.a("string");
      expect(nexus.resources.limits.memory).to.be.a("string");
      expect(pod.spec.automountServiceAccountToken).to.equal(false);
    });
  });

  it("the CloudNativePG cluster has 3 instances with synchronous replication that a commit must wait for", () => {
    const spec = one("Cluster", "nexus-db").spec;
    expect(spec.instances).to.equal(3);
    expect(spec.postgresql.synchronous.number).to.be.at.least(1);
    expect(spec.postgresql.synchronous.dataDurability).to.equal("required");
  });

  it("the superuser's SPIFFE ID is the server's default NEXUS_SUPERUSER_ID", () => {
    expect(one("ClusterSPIFFEID", "nexus-superuser").spec.spiffeIDTemplate).to.equal("spiffe://{{ .TrustDomain }}/spike/pilot/role/superuser");
  });

  describe("the example workload with the spike agent sidecar", () => {
    it("runs `spike agent --config` as a native sidecar, with its ConfigMap, the Workload API socket and a shared secrets volume", async () => {
      const deployment = one("Deployment", "demo-workload");
      const spec = deployment.spec.template.spec;
      expect(matches(deployment.spec.selector.matchLabels, deployment.spec.template.metadata.labels)).to.equal(true);
      const id = one("ClusterSPIFFEID", "demo-workload").spec;
      expect(matches(id.podSelector.matchLabels, deployment.spec.template.metadata.labels)).to.equal(true);

      const agent: Container = spec.initContainers.find((c: Container) => c.name === "spike-agent");
      expect(agent.restartPolicy, "a native sidecar").to.equal("Always");
      expect([...(agent.command ?? []), ...(agent.args ?? [])]).to.deep.equal(["spike", "agent", "--config", "/etc/spike-agent/agent.yaml"]);
      const volumes = new Map<string, Any>(spec.volumes.map((v: Any) => [v.name, v]));
      const configMount = mountFor(agent, "/etc/spike-agent/agent.yaml");
      const configMap = one("ConfigMap", volumes.get(configMount.volume).configMap.name);
      const config = parseYaml(configMap.data[configMount.key]) as Any;

      // The agent talks to the Service's gRPC port and expects the server's SPIFFE ID.
      const service = one("Service", "nexus");
      const grpcPort = service.spec.ports.find((p: Any) => p.name === "grpc").port;
      expect(config.nexus.addr).to.equal(`${service.metadata.name}.${service.metadata.namespace}.svc:${grpcPort}`);
      expect(config.nexus.server_id).to.equal(one("ClusterSPIFFEID", "nexus-server").spec.spiffeIDTemplate.replace("{{ .TrustDomain }}", "spike.ist"));
      const socket = mountFor(agent, config.svid.socket.replace(/^unix:\/\//, ""));
      expect(volumes.get(socket.volume).csi.driver).to.equal("csi.spiffe.io");
      expect(agent.startupProbe.httpGet.port).to.equal(portOf(config.health.listen));

      // Each output file lands in a volume the application mounts too.
      const app: Container = spec.containers.find((c: Container) => c.name === "app");
      for (const output of config.outputs) {
        const written = mountFor(agent, output.file);
        expect(mountFor(app, output.file).volume).to.equal(written.volume);
      }
      for (const c of [agent, app]) {
        expect(c.securityContext.readOnlyRootFilesystem, c.name).to.equal(true);
        for (const m of c.volumeMounts ?? []) expect(volumes.has(m.name), `${c.name} mounts ${m.name}`).to.equal(true);
      }
      expect(spec.securityContext.runAsNonRoot).to.equal(true);
    });
  });
});
