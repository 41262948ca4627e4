// Validates Kubernetes manifests offline, as an API server would read them, plus dsproxy's own
// deployment rules. Run by tests/deploy/validate.sh (ctest deploy.manifests).
//
//   node validate.mjs [--policy dsproxy|experiment=CONFIG|kind-config] FILE...
//
// Every YAML document of every FILE ('-' is stdin) is checked twice, by two packages generated
// from the Kubernetes OpenAPI specification:
//   1. kubernetes-models (ajv validators compiled from the schemas): value types, enums, formats,
//      required fields, int-or-string and quantities;
//   2. @kubernetes/client-node's model type map: every field of every nested object must be one
//      the schema declares, so a misspelt or misplaced field fails (the API server would drop it
//      silently, or reject it under strict field validation).
// An apiVersion/kind neither package knows fails too. --policy adds the rules that schemas
// cannot express (see the policy functions). Prints one line per problem and exits 1 if any.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { parseAllDocuments } from 'yaml';

const require = createRequire(import.meta.url);
// The generated models only: the package's entry point would also load its HTTP stack (slower).
const clientNode = require('@kubernetes/client-node/dist/gen/models/all.js');

const problems = [];
const problem = (where, message) => problems.push(`${where}: ${message}`);

const args = process.argv.slice(2);
const policies = [];
const files = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--policy') policies.push(args[++i]);
  else files.push(args[i]);
}
if (files.length === 0) {
  console.error('usage: node validate.mjs [--policy dsproxy|experiment=CONFIG|kind-config] FILE...');
  process.exit(2);
}

function readDocuments(file) {
  const text = readFileSync(file === '-' ? 0 : file, 'utf8');
  const documents = [];
  for (const doc of parseAllDocuments(text)) {
    for (const error of doc.errors) problem(file, `YAML: ${error.message}`);
    const value = doc.toJS();
    if (value !== null && value !== undefined) documents.push({ file, value });
  }
  return documents;
}

function identity({ file, value }) {
  const meta = value.metadata ?? {};
  return `${file}: ${value.kind ?? '?'} ${meta.namespace ? meta.namespace + '/' : ''}${meta.name ?? '?'}`;
}

// ---- schema checks ------------------------------------------------------------------------

// kubernetes-models lays its classes out as <group>/<version>/<Kind> ("v1/Service" for core).
async function modelsClass(apiVersion, kind) {
  if (!/^[a-z0-9.]*\/?v[0-9a-z]+$/.test(apiVersion) || !/^[A-Z][A-Za-z]+$/.test(kind)) return null;
  try {
    const module = await import(`kubernetes-models/${apiVersion}/${kind}`);
    return module[kind] ?? module.default ?? null;
  } catch {
    return null;
  }
}

// client-node names its models <Version><Kind>: V1Service, V1DaemonSet, V1ClusterRole.
function clientNodeType(apiVersion, kind) {
  const version = apiVersion.split('/').pop();
  const name = version.charAt(0).toUpperCase() + version.slice(1) + kind;
  return clientNode[name]?.attributeTypeMap ? name : null;
}

// Walks VALUE along client-node's TYPE ("V1PodSpec", "Array<V1Container>",
// "{ [key: string]: string; }", "string", ...). Checks that objects carry only declared fields and
// that objects, arrays and scalars are where the schema puts them; scalar types, enums and formats
// are the ajv validators' job (client-node types quantities as strings, YAML may write numbers).
function walk(value, type, path, where) {
  if (value === null || value === undefined) return;
  let m;
  if ((m = /^Array<(.+)>$/.exec(type))) {
    if (!Array.isArray(value)) return problem(where, `${path}: expected a list, got ${typeof value}`);
    value.forEach((item, i) => walk(item, m[1], `${path}[${i}]`, where));
    return;
  }
  if ((m = /^\{ \[key: string\]: (.+); \}$/.exec(type))) {
    if (typeof value !== 'object' || Array.isArray(value)) return problem(where, `${path}: expected a map`);
    for (const [k, v] of Object.entries(value)) walk(v, m[1], `${path}.${k}`, where);
    return;
  }
  if (['any', 'object'].includes(type)) return;
  if (['string', 'number', 'boolean', 'Date', 'IntOrString'].includes(type)) {
    if (typeof value === 'object') problem(where, `${path}: expected a ${type}, got ${Array.isArray(value) ? 'a list' : 'an object'}`);
    return;
  }
  const model = clientNode[type];
  if (!model?.attributeTypeMap) return problem(where, `${path}: no schema for type ${type}`);
  if (typeof value !== 'object' || Array.isArray(value)) {
    return problem(where, `${path}: expected an object (${type}), got ${Array.isArray(value) ? 'a list' : typeof value}`);
  }
  const fields = new Map(model.attributeTypeMap.map((a) => [a.baseName, a.type]));
  for (const [k, v] of Object.entries(value)) {
    if (!fields.has(k)) {
      problem(where, `${path}.${k}: unknown field (not in ${type}; known: ${[...fields.keys()].join(', ')})`);
    } else {
      walk(v, fields.get(k), `${path}.${k}`, where);
    }
  }
}

async function validateSchema(doc) {
  const where = identity(doc);
  const { apiVersion, kind } = doc.value;
  if (typeof apiVersion !== 'string' || typeof kind !== 'string') {
    return problem(where, 'apiVersion and kind must be strings');
  }
  const Model = await modelsClass(apiVersion, kind);
  const typeName = clientNodeType(apiVersion, kind);
  if (!Model || !typeName) return problem(where, `unknown apiVersion/kind ${apiVersion} ${kind}`);
  try {
    new Model(doc.value).validate();
  } catch (error) {
    // ValidationError: one entry per failed keyword, with the JSON pointer of the value.
    const details = error.errors ?? error.details ?? [];
    if (details.length === 0) problem(where, `schema: ${error.message}`);
    for (const d of details) problem(where, `schema: ${d.instancePath || '/'} ${d.message}`);
  }
  walk(doc.value, typeName, kind, where);
}

// ---- kind's cluster config (kind.x-k8s.io/v1alpha4): not a Kubernetes API object ------------

function validateKindConfig(doc) {
  const where = identity(doc);
  const v = doc.value;
  const only = (object, allowed, path) => {
    for (const k of Object.keys(object ?? {})) {
      if (!allowed.includes(k)) problem(where, `${path}.${k}: unknown field (known: ${allowed.join(', ')})`);
    }
  };
  if (v.apiVersion !== 'kind.x-k8s.io/v1alpha4' || v.kind !== 'Cluster') {
    return problem(where, 'expected apiVersion kind.x-k8s.io/v1alpha4, kind Cluster');
  }
  only(v, ['apiVersion', 'kind', 'name', 'networking', 'nodes', 'featureGates', 'runtimeConfig',
    'kubeadmConfigPatches', 'containerdConfigPatches'], 'Cluster');
  only(v.networking, ['ipFamily', 'apiServerAddress', 'apiServerPort', 'podSubnet',
    'serviceSubnet', 'disableDefaultCNI', 'kubeProxyMode', 'dnsSearch'], 'Cluster.networking');
  if (v.networking?.ipFamily !== 'dual') problem(where, 'networking.ipFamily must be dual (the experiment is dual-stack)');
  const roles = (v.nodes ?? []).map((n) => n.role);
  (v.nodes ?? []).forEach((n, i) => only(n, ['role', 'image', 'extraMounts', 'extraPortMappings',
    'labels', 'kubeadmConfigPatches', 'kubeadmConfigPatchesJSON6902'], `Cluster.nodes[${i}]`));
  if (roles.filter((r) => r === 'control-plane').length !== 1 || roles.filter((r) => r === 'worker').length !== 2) {
    problem(where, `nodes must be one control-plane and two workers, got ${JSON.stringify(roles)}`);
  }
}

// ---- policy: dsproxy's deployment rules ---------------------------------------------------

const sorted = (list) => [...(list ?? [])].sort();
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

function policyDsproxy(docs) {
  const find = (kind, name) => docs.filter((d) => d.value.kind === kind && d.value.metadata?.name === name);
  const one = (kind, name) => {
    const found = find(kind, name);
    if (found.length !== 1) problem('policy', `want exactly one ${kind} ${name}, found ${found.length}`);
    return found[0]?.value;
  };
  const kinds = sorted(docs.map((d) => d.value.kind));
  if (!same(kinds, ['ClusterRole', 'ClusterRoleBinding', 'DaemonSet', 'ServiceAccount'])) {
    problem('policy', `want ServiceAccount, ClusterRole, ClusterRoleBinding, DaemonSet; got ${kinds.join(', ')}`);
  }
  for (const d of docs) {
    const namespaced = ['ServiceAccount', 'DaemonSet'].includes(d.value.kind);
    if (namespaced && d.value.metadata?.namespace !== 'kube-system') {
      problem(identity(d), 'must be in namespace kube-system');
    }
  }

  const role = one('ClusterRole', 'dsproxy');
  if (role) {
    const want = [
      { apiGroups: [''], resources: ['namespaces', 'nodes', 'pods', 'services'], verbs: ['get', 'list', 'watch'] },
      { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['get', 'list', 'watch'] },
      { apiGroups: ['security.istio.io'], resources: ['authorizationpolicies'], verbs: ['get', 'list', 'watch'] },
    ];
    const got = (role.rules ?? [])
      .map((r) => ({ apiGroups: sorted(r.apiGroups), resources: sorted(r.resources), verbs: sorted(r.verbs),
        ...(r.resourceNames ? { resourceNames: r.resourceNames } : {}),
        ...(r.nonResourceURLs ? { nonResourceURLs: r.nonResourceURLs } : {}) }))
      .sort((a, b) => JSON.stringify(a).localeCompare(JSON.stringify(b)));
    if (!same(got, want)) {
      problem('policy', `ClusterRole dsproxy: rules must be exactly get/list/watch on core services, pods, nodes, namespaces, discovery.k8s.io endpointslices and security.istio.io authorizationpolicies; got ${JSON.stringify(role.rules)}`);
    }
  }
  const binding = one('ClusterRoleBinding', 'dsproxy');
  if (binding) {
    if (!same(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'dsproxy' })) {
      problem('policy', `ClusterRoleBinding dsproxy: roleRef must be ClusterRole dsproxy, got ${JSON.stringify(binding.roleRef)}`);
    }
    if (!same(binding.subjects, [{ kind: 'ServiceAccount', name: 'dsproxy', namespace: 'kube-system' }])) {
      problem('policy', `ClusterRoleBinding dsproxy: the only subject must be ServiceAccount kube-system/dsproxy, got ${JSON.stringify(binding.subjects)}`);
    }
  }
  const account = one('ServiceAccount', 'dsproxy');
  if (account?.automountServiceAccountToken === false) {
    problem('policy', 'ServiceAccount dsproxy: the token must be mounted (--kubernetes reads it)');
  }

  const ds = one('DaemonSet', 'dsproxy');
  if (!ds) return;
  const at = (message) => problem('policy', `DaemonSet dsproxy: ${message}`);
  const spec = ds.spec?.template?.spec ?? {};
  if (spec.serviceAccountName !== 'dsproxy') at('serviceAccountName must be dsproxy');
  if (spec.automountServiceAccountToken === false) at('the service account token must be mounted');
  if (spec.hostNetwork !== true) at('hostNetwork must be true (the rules and listeners belong to the node namespace)');
  if (spec.hostPID || spec.hostIPC) at('hostPID/hostIPC must stay off');
  if (spec.dnsPolicy !== 'Default') at(`dnsPolicy must be Default (the node's resolvers are the DNS proxy's upstreams), got ${spec.dnsPolicy}`);
  if (spec.priorityClassName !== 'system-node-critical') at('priorityClassName must be system-node-critical');
  if (!(spec.tolerations ?? []).some((t) => t.operator === 'Exists' && !t.key && !t.effect)) {
    at('tolerations must include {operator: Exists} (run on every node)');
  }
  const strategy = ds.spec?.updateStrategy ?? {};
  if (strategy.type !== 'RollingUpdate' || ![1, '1'].includes(strategy.rollingUpdate?.maxSurge) ||
      ![0, '0', '0%'].includes(strategy.rollingUpdate?.maxUnavailable)) {
    at('updateStrategy must be RollingUpdate with maxSurge 1 and maxUnavailable 0 (the new pod takes over before the old one stops)');
  }
  // With hostNetwork a declared containerPort is a host port to the scheduler, which would refuse
  // the surge pod next to the old one.
  if ((spec.containers ?? []).some((c) => (c.ports ?? []).length)) {
    at('no container ports (with hostNetwork they are host ports, and the surge pod could not be scheduled)');
  }
  const containers = spec.containers ?? [];
  if (containers.length !== 1) at(`exactly one container (no sidecar), got ${containers.map((c) => c.name).join(', ')}`);
  if ((spec.initContainers ?? []).length) at('no init containers');
  if ((spec.volumes ?? []).length) at(`no volumes (nothing shared with a sidecar), got ${spec.volumes.map((v) => v.name).join(', ')}`);
  if (spec.securityContext?.seccompProfile?.type !== 'RuntimeDefault') at('pod seccompProfile must be RuntimeDefault');
  const c = containers[0];
  if (!c) return;
  const sc = c.securityContext ?? {};
  if (sc.privileged !== false) at('container must set privileged: false');
  if (sc.allowPrivilegeEscalation !== false) at('container must set allowPrivilegeEscalation: false');
  if (!same(sc.capabilities?.drop, ['ALL'])) at(`capabilities.drop must be [ALL], got ${JSON.stringify(sc.capabilities?.drop)}`);
  if (!same(sorted(sc.capabilities?.add), ['NET_ADMIN', 'NET_RAW'])) {
    at(`capabilities.add must be exactly NET_ADMIN and NET_RAW, got ${JSON.stringify(sc.capabilities?.add)}`);
  }
  if (sc.readOnlyRootFilesystem !== true) at('readOnlyRootFilesystem must be true');
  if ((c.volumeMounts ?? []).length) at('no volume mounts');
  const probe = c.readinessProbe?.httpGet;
  if (!probe || String(probe.port) !== '15021' || probe.path !== '/healthz/ready') {
    at(`readinessProbe must be httpGet :15021/healthz/ready, got ${JSON.stringify(c.readinessProbe)}`);
  }
  // A hung dsproxy keeps its capture rules: only the kubelet's restart helps (issue 13).
  const live = c.livenessProbe?.httpGet;
  if (!live || String(live.port) !== '15021' || live.path !== '/healthz/live') {
    at(`livenessProbe must be httpGet :15021/healthz/live, got ${JSON.stringify(c.livenessProbe)}`);
  }
  const cmd = c.args ?? [];
  for (const want of ['run', '--kubernetes', '--node=$(NODE_NAME)', '--redirect']) {
    if (!cmd.includes(want)) at(`args must include ${want}, got ${JSON.stringify(cmd)}`);
  }
  if (cmd.some((a) => a.startsWith('--config'))) at('args must not use --config (the API is the source)');
  const node = (c.env ?? []).find((e) => e.name === 'NODE_NAME');
  if (node?.valueFrom?.fieldRef?.fieldPath !== 'spec.nodeName') at('env NODE_NAME must come from spec.nodeName');
  const drain = cmd.map((a) => /^--drain-grace-ms=(\d+)$/.exec(a)).find(Boolean);
  if (!drain) {
    at('args must set --drain-grace-ms=N');
  } else if (!(spec.terminationGracePeriodSeconds >= Number(drain[1]) / 1000 + 5)) {
    at(`terminationGracePeriodSeconds (${spec.terminationGracePeriodSeconds}) must cover --drain-grace-ms (${drain[1]} ms) plus 5 s for the rule removal`);
  }
  const r = c.resources ?? {};
  if (!r.requests?.cpu || !r.requests?.memory) at('resources.requests must set cpu and memory');
  if (!r.limits?.memory) at('resources.limits must set memory');
  if (r.limits?.cpu) at('no CPU limit (throttling adds latency to every connection)');
}

// ---- policy: the kind experiment's Services match config/tcp-echo-experiment.yaml ----------

function policyExperiment(docs, configFile) {
  const wanted = readDocuments(configFile).filter((d) => d.value.kind === 'Service');
  const got = docs.filter((d) => d.value.kind === 'Service');
  const key = (s) => `${s.metadata?.namespace}/${s.metadata?.name}`;
  const fields = (s) => JSON.stringify({
    type: s.spec?.type ?? 'ClusterIP', ipFamilyPolicy: s.spec?.ipFamilyPolicy, ipFamilies: s.spec?.ipFamilies,
    clusterIPs: s.spec?.clusterIPs, selector: s.spec?.selector,
    ports: (s.spec?.ports ?? []).map((p) => ({ name: p.name, port: p.port, protocol: p.protocol ?? 'TCP', targetPort: p.targetPort })),
  });
  for (const w of wanted.filter((d) => d.value.metadata?.name === 'tcp-echo')) {
    const g = got.find((d) => key(d.value) === key(w.value));
    if (!g) problem('policy', `Service ${key(w.value)} of ${configFile} is missing`);
    else if (fields(g.value) !== fields(w.value)) {
      problem(identity(g), `differs from ${configFile}: ${fields(g.value)} != ${fields(w.value)}`);
    }
  }
}

// ---- main ---------------------------------------------------------------------------------

const docs = files.flatMap(readDocuments);
if (docs.length === 0) problem(files.join(' '), 'no YAML document');
for (const doc of docs) {
  if (doc.value.apiVersion === 'kind.x-k8s.io/v1alpha4') validateKindConfig(doc);
  else await validateSchema(doc);
}
for (const policy of policies) {
  if (policy === 'dsproxy') policyDsproxy(docs);
  else if (policy.startsWith('experiment=')) policyExperiment(docs, policy.slice('experiment='.length));
  else if (policy === 'kind-config') {
    if (!docs.some((d) => d.value.apiVersion === 'kind.x-k8s.io/v1alpha4')) problem('policy', 'no kind Cluster config');
  } else problem('policy', `unknown policy ${policy}`);
}

for (const p of problems) console.log(`INVALID ${p}`);
console.log(`${files.join(' ')}: ${docs.length} documents, ${problems.length} problems`);
process.exit(problems.length ? 1 : 0);
