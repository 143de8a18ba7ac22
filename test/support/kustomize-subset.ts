// Renders deploy/kubernetes the way `kustomize build` does for the only
// features its kustomization.yaml uses: `resources` (files, in order, multi-
// document YAML) and `namespace` (set on every object kustomize treats as
// namespaced: everything but the built-in cluster-scoped kinds; kustomize does
// not know a CRD's scope either). Any other kustomization field is refused, so
// the test cannot silently render something kustomize would render differently.

import { readFile } from "node:fs/promises";
import path from "node:path";
import { parseAllDocuments } from "yaml";

export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; [k: string]: unknown };
  [k: string]: unknown;
}

const SUPPORTED = new Set(["apiVersion", "kind", "namespace", "resources"]);
/** Built-in cluster-scoped kinds kustomize's namespace transformer leaves alone. */
const CLUSTER_SCOPED = new Set(["Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume", "StorageClass", "PriorityClass", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "APIService"]);

export async function renderKustomization(dir: string): Promise<KubeObject[]> {
  const k = parseOne(await readFile(path.join(dir, "kustomization.yaml"), "utf8"), "kustomization.yaml") as Record<string, unknown>;
  for (const key of Object.keys(k)) if (!SUPPORTED.has(key)) throw new Error(`kustomization.yaml: "${key}" is not implemented by the test's renderer`);
  if (k.kind !== "Kustomization") throw new Error("kustomization.yaml: kind must be Kustomization");
  const namespace = k.namespace as string | undefined;
  const out: KubeObject[] = [];
  for (const file of (k.resources as string[] | undefined) ?? []) {
    const docs = parseAllDocuments(await readFile(path.join(dir, file), "utf8"));
    for (const doc of docs) {
      if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0].message}`);
      const obj = doc.toJS() as KubeObject | null;
      if (obj === null) continue;
      if (namespace !== undefined) {
        if (obj.kind === "Namespace") obj.metadata.name = namespace;
        else if (!CLUSTER_SCOPED.has(obj.kind)) obj.metadata.namespace = namespace;
      }
      out.push(obj);
    }
  }
  return out;
}

function parseOne(text: string, name: string): unknown {
  const docs = parseAllDocuments(text);
  if (docs.length !== 1 || docs[0].errors.length > 0) throw new Error(`${name}: expected one YAML document`);
  return docs[0].toJS();
}
