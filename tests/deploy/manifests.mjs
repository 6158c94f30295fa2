// Checks rendered deploy/kubernetes manifests offline, and writes what the shell tests need.
//
//   node manifests.mjs --out DIR [--self-test] NAME=RENDERED.yaml...   (NAME: base or ha)
//
// For each rendering:
//   * every object is validated against the Kubernetes API's JSON schemas (kubernetes-models)
//     or prometheus-operator's (PodMonitor), and, as the API server does with strict field
//     validation, a field the schema does not know is an error (a typo such as
//     readOnlyRootFileSystem is otherwise ignored by a schema without additionalProperties);
//   * the ConfigMap's walshift.yaml is parsed and the objects must agree with it: status port =
//     containerPort = probe ports = Service targetPort = NetworkPolicy ingress port = PodMonitor
//     port; every dsn_file and status.token_file lies under a read-only Secret volume, with its
//     key in the volume's items; TMPDIR is a writable emptyDir; the config file the container
//     is started with is the ConfigMap's key; probes, security context, resources, grace
//     period; base: 1 replica, ha: 2 with pod anti-affinity and ha.enabled, the rest of its
//     config equal to the base's.
// Writes DIR/NAME/walshift.yaml (the ConfigMap's file) and DIR/NAME/facts.sh (shell
// assignments: paths, port, user, grace period, the secret files and their roles).
// --self-test also breaks the base rendering in known ways and fails unless each is caught.
// Exit 0 when everything holds, 1 with one line per problem.
//
// The packages come from DEPLOY_NODE_MODULES (tests/deploy/tooling.sh installs them).
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const nodeModules = process.env.DEPLOY_NODE_MODULES;
if (!nodeModules) {
  console.error("manifests.mjs: DEPLOY_NODE_MODULES is not set (tests/deploy/tooling.sh sets it)");
  process.exit(1);
}
const require = createRequire(path.join(nodeModules, "..", "package.json"));
const YAML = require("yaml");

// apiVersion -> the module holding its models.
function modelModule(apiVersion) {
  if (apiVersion === "v1") return "kubernetes-models/v1";
  if (apiVersion.startsWith("monitoring.coreos.com/")) {
    return `@kubernetes-models/prometheus-operator/${apiVersion}`;
  }
  return `kubernetes-models/${apiVersion}`;
}

function modelClass(apiVersion, kind) {
  let mod;
  try {
    mod = require(modelModule(apiVersion));
  } catch {
    return null;
  }
  const cls = mod[kind];
  return typeof cls === "function" && cls.apiVersion === apiVersion && cls.kind === kind ? cls : null;
}

// Validates data with the model's JSON-schema validator through a proxy that records which
// fields the validator looked at. A field of an object that the validator neither read nor
// enumerated (maps and additionalProperties are enumerated) is not in the schema.
function unknownFields(cls, data) {
  const records = [];
  const wrap = (value, where) => {
    if (value === null || typeof value !== "object") return value;
    const rec = { where, value, read: new Set(), enumerated: false, array: Array.isArray(value) };
    records.push(rec);
    const children = new Map();
    return new Proxy(value, {
      get(target, key, receiver) {
        const v = Reflect.get(target, key, receiver);
        if (typeof key !== "string") return v;
        rec.read.add(key);
        if (v === null || typeof v !== "object" || !Object.prototype.hasOwnProperty.call(target, key)) return v;
        if (!children.has(key)) children.set(key, wrap(v, `${where}/${key}`));
        return children.get(key);
      },
      has(target, key) {
        if (typeof key === "string") rec.read.add(key);
        return Reflect.has(target, key);
      },
      getOwnPropertyDescriptor(target, key) {
        if (typeof key === "string") rec.read.add(key);
        return Reflect.getOwnPropertyDescriptor(target, key);
      },
      ownKeys(target) {
        rec.enumerated = true;
        return Reflect.ownKeys(target);
      },
    });
  };
  let error = null;
  try {
    cls.prototype.validate.call(wrap(data, ""));
  } catch (e) {
    error = e.message;
  }
  const unknown = [];
  for (const rec of records) {
    if (rec.array || rec.enumerated) continue;
    for (const key of Object.keys(rec.value)) {
      if (!rec.read.has(key)) unknown.push(`${rec.where}/${key}`);
    }
  }
  return { error, unknown };
}

function parseRendering(file) {
  const docs = YAML.parseAllDocuments(fs.readFileSync(file, "utf8"));
  const objects = [];
  for (const doc of docs) {
    if (doc.errors.length) throw new Error(`${file}: ${doc.errors[0].message}`);
    const obj = doc.toJS();
    if (obj !== null) objects.push(obj);
  }
  return objects;
}

const same = (a, b) => JSON.stringify(sortKeys(a)) === JSON.stringify(sortKeys(b));
function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  }
  return v;
}
const selects = (selector, labels) =>
  !!selector && Object.entries(selector.matchLabels || {}).length > 0 &&
  Object.entries(selector.matchLabels || {}).every(([k, v]) => labels[k] === v) &&
  !(selector.matchExpressions || []).length;
const under = (file, dir) => file === dir || file.startsWith(dir.endsWith("/") ? dir : `${dir}/`);

// Checks one rendering; returns { problems, facts, config }.
function check(name, objects) {
  const problems = [];
  const bad = (msg) => problems.push(`${name}: ${msg}`);
  const id = (o) => `${o.kind}/${o.metadata?.name}`;

  for (const o of objects) {
    if (!o.apiVersion || !o.kind) {
      bad(`an object without apiVersion/kind: ${JSON.stringify(o).slice(0, 80)}`);
      continue;
    }
    const cls = modelClass(o.apiVersion, o.kind);
    if (!cls) {
      bad(`${id(o)}: no schema for ${o.apiVersion} ${o.kind}`);
      continue;
    }
    const { error, unknown } = unknownFields(cls, o);
    if (error) bad(`${id(o)}: schema: ${error}`);
    for (const f of unknown) bad(`${id(o)}: unknown field ${f}`);
  }

  const byKind = (kind) => objects.filter((o) => o.kind === kind);
  const one = (kind) => {
    const found = byKind(kind);
    if (found.length !== 1) bad(`expected exactly one ${kind}, found ${found.length}`);
    return found[0];
  };
  const deployment = one("Deployment");
  const service = one("Service");
  const pdb = one("PodDisruptionBudget");
  const netpol = one("NetworkPolicy");
  const podmonitor = one("PodMonitor");
  if (!deployment) return { problems, facts: null, config: null };

  const spec = deployment.spec || {};
  const pod = spec.template?.spec || {};
  const podLabels = spec.template?.metadata?.labels || {};
  if (!selects(spec.selector, podLabels)) bad("the Deployment's selector does not select its pods");
  const containers = pod.containers || [];
  const c = containers.find((x) => x.name === "walshiftd");
  if (!c) {
    bad("no container named walshiftd");
    return { problems, facts: null, config: null };
  }
  if (containers.length !== 1) bad(`the pod has ${containers.length} containers, expected walshiftd alone`);
  if (c.image !== "walshift/walshiftd:latest") bad(`image is ${c.image}, expected walshift/walshiftd:latest`);

  const volumes = Object.fromEntries((pod.volumes || []).map((v) => [v.name, v]));
  const mounts = (c.volumeMounts || []).map((m) => ({ ...m, volume: volumes[m.name] }));
  for (const m of mounts) if (!m.volume) bad(`volumeMount ${m.name} names no volume`);
  const env = Object.fromEntries((c.env || []).map((e) => [e.name, e.value]));
  // The mount a file of the container lies under (the longest mountPath), and its path there.
  const mountOf = (file) => {
    const m = mounts.filter((x) => under(file, x.mountPath)).sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
    return m ? { mount: m, rel: file.slice(m.mountPath.replace(/\/$/, "").length + 1) } : null;
  };

  // The config: the file named by --config, in a ConfigMap volume.
  const args = [...(c.command || []), ...(c.args || [])];
  const ci = args.indexOf("--config");
  const configPath = ci >= 0 ? args[ci + 1] : undefined;
  let config = null;
  let configText = null;
  if (!configPath) {
    bad("walshiftd is not started with --config FILE");
  } else {
    const at = mountOf(configPath);
    const cm = at?.mount.volume?.configMap;
    if (!cm) {
      bad(`--config ${configPath} is not in a ConfigMap volume`);
    } else {
      const item = cm.items ? cm.items.find((i) => i.path === at.rel) : { key: at.rel };
      const map = byKind("ConfigMap").find((o) => o.metadata.name === cm.name);
      if (!map) bad(`ConfigMap ${cm.name} (mounted at ${at.mount.mountPath}) is not in the rendering`);
      else if (!item || map.data?.[item.key] === undefined) bad(`ConfigMap ${cm.name} has no key for ${configPath}`);
      else {
        configText = map.data[item.key];
        try {
          config = YAML.parse(configText);
        } catch (e) {
          bad(`${configPath}: not YAML: ${e.message}`);
        }
        if (!at.mount.readOnly) bad(`the config mount ${at.mount.mountPath} is not readOnly`);
      }
    }
  }
  if (!config) return { problems, facts: null, config };

  // The status port everywhere.
  const listen = String(config.status?.listen || "127.0.0.1:9187");
  const lm = listen.match(/^(.*):(\d+)$/);
  const port = lm ? Number(lm[2]) : NaN;
  if (!lm || !["0.0.0.0", "[::]", "::"].includes(lm[1])) {
    bad(`status.listen is "${listen}": inside a pod it must listen on every address (0.0.0.0:PORT)`);
  }
  const cports = c.ports || [];
  const statusPort = cports.find((p) => p.containerPort === port);
  if (!statusPort) bad(`no containerPort ${port} (status.listen) on the container`);
  const resolve = (p) => (typeof p === "number" ? p : cports.find((x) => x.name === p)?.containerPort);
  const probe = (kind, pathWanted, required) => {
    const p = c[kind];
    if (!p) {
      if (required) bad(`no ${kind}`);
      return;
    }
    const g = p.httpGet;
    if (!g) return bad(`${kind} is not an httpGet`);
    if (g.path !== pathWanted) bad(`${kind} asks ${g.path}, expected ${pathWanted}`);
    if (resolve(g.port) !== port) bad(`${kind} port ${g.port} is not the status port ${port}`);
    if ((g.httpHeaders || []).length) bad(`${kind} sends headers: the probes need no token`);
    if (g.scheme && g.scheme !== "HTTP") bad(`${kind} scheme ${g.scheme}: the endpoint speaks HTTP`);
  };
  probe("livenessProbe", "/healthz", true);
  probe("readinessProbe", "/readyz", true);
  probe("startupProbe", "/healthz", false);
  const lp = c.livenessProbe || {};
  const stuck = (lp.periodSeconds || 10) * (lp.failureThreshold || 3);
  if (stuck < 30) bad(`the liveness probe restarts after ${stuck} s of failures: less than a database's connect timeout`);

  if (service) {
    if (!selects(service.spec?.selector && { matchLabels: service.spec.selector }, podLabels)) bad("the Service does not select the pods");
    const sp = service.spec?.ports || [];
    if (!sp.length || !sp.every((p) => resolve(p.targetPort ?? p.port) === port)) {
      bad(`a Service port does not reach the status port ${port}`);
    }
  }
  if (netpol) {
    if (!selects(netpol.spec?.podSelector, podLabels)) bad("the NetworkPolicy does not select the pods");
    const types = netpol.spec?.policyTypes || [];
    if (!types.includes("Ingress") || !types.includes("Egress")) bad("the NetworkPolicy does not restrict both Ingress and Egress");
    const ingress = (netpol.spec?.ingress || []).flatMap((r) => r.ports || [{ port: "any" }]);
    if (!ingress.length || !ingress.every((p) => resolve(p.port) === port && (p.protocol || "TCP") === "TCP")) {
      bad(`the NetworkPolicy lets in more than TCP ${port}: ${JSON.stringify(ingress)}`);
    }
    const egress = (netpol.spec?.egress || []).flatMap((r) => r.ports || []);
    for (const [p, proto] of [[5432, "TCP"], [9092, "TCP"], [53, "UDP"], [53, "TCP"]]) {
      if (!egress.some((e) => e.port === p && (e.protocol || "TCP") === proto)) bad(`the NetworkPolicy lets out no ${proto} ${p}`);
    }
  }
  if (pdb && !selects(pdb.spec?.selector, podLabels)) bad("the PodDisruptionBudget does not select the pods");

  // Secret files: every dsn_file and the token file.
  const credentialsDir = env.CREDENTIALS_DIRECTORY;
  const secretFiles = [];
  const secretFile = (key, file, role) => {
    if (!file) return;
    let full = file;
    if (!file.startsWith("/")) {
      if (!credentialsDir) return bad(`${key}: ${file} is relative and the container sets no CREDENTIALS_DIRECTORY`);
      full = `${credentialsDir}/${file}`;
    }
    const at = mountOf(full);
    const secret = at?.mount.volume?.secret;
    if (!secret) return bad(`${key}: ${full} is not in a mounted Secret`);
    if (!at.mount.readOnly) bad(`${key}: the Secret mount ${at.mount.mountPath} is not readOnly`);
    let secretKey = at.rel;
    if (secret.items) {
      const item = secret.items.find((i) => i.path === at.rel);
      if (!item) return bad(`${key}: ${full}: Secret ${secret.secretName} mounted at ${at.mount.mountPath} has no item with path ${at.rel}`);
      secretKey = item.key;
    }
    const generated = byKind("Secret").find((s) => s.metadata.name === secret.secretName);
    if (generated && !({ ...generated.data, ...generated.stringData })[secretKey]) {
      bad(`${key}: Secret ${secret.secretName} has no key ${secretKey}`);
    }
    if (!secret.items && !generated) {
      bad(`${key}: Secret ${secret.secretName} is mounted without items and is not rendered: its keys are unknown`);
    }
    if (secret.optional) bad(`${key}: Secret ${secret.secretName} is optional`);
    secretFiles.push({ role, file: full, secret: secret.secretName, key: secretKey, mode: secret.defaultMode });
  };
  if (config.source?.dsn !== undefined || config.source?.dsn_env !== undefined) bad("source: the DSN must be a dsn_file (a Secret)");
  secretFile("source.dsn_file", config.source?.dsn_file, "source");
  (config.targets || []).forEach((t, i) => {
    if ((t.kind || "postgres") !== "postgres") return;
    if (t.dsn !== undefined || t.dsn_env !== undefined) bad(`targets[${i}]: the DSN must be a dsn_file (a Secret)`);
    secretFile(`targets[${i}].dsn_file`, t.dsn_file, `target:${t.name}`);
  });
  if (!config.status?.token_file) bad("status.token_file is not set: /status and /metrics would be open on 0.0.0.0");
  secretFile("status.token_file", config.status?.token_file, "token");
  if (podmonitor) {
    if (!selects(podmonitor.spec?.selector, podLabels)) bad("the PodMonitor does not select the pods");
    const eps = podmonitor.spec?.podMetricsEndpoints || [];
    if (!eps.length) bad("the PodMonitor has no endpoint");
    const token = secretFiles.find((s) => s.role === "token");
    for (const ep of eps) {
      if (resolve(ep.port) !== port) bad(`the PodMonitor scrapes port ${ep.port}, not the status port`);
      if ((ep.path || "/metrics") !== "/metrics") bad(`the PodMonitor scrapes ${ep.path}`);
      const cred = ep.authorization?.credentials || ep.bearerTokenSecret;
      if (!cred) bad("the PodMonitor sends no bearer token: /metrics answers 401 without it");
      else if (token && (cred.name !== token.secret || cred.key !== token.key)) {
        bad(`the PodMonitor's token is ${cred.name}/${cred.key}, walshiftd's is ${token.secret}/${token.key}`);
      }
      if (ep.authorization && (ep.authorization.type || "Bearer") !== "Bearer") bad("the PodMonitor's authorization is not Bearer");
    }
  }

  // TMPDIR: a writable emptyDir (the read-only root filesystem has no other place to write).
  const tmpdir = env.TMPDIR;
  if (!tmpdir) bad("TMPDIR is not set: walshiftd spools streamed transactions to $TMPDIR (default /tmp)");
  const tmpAt = tmpdir && mountOf(tmpdir);
  if (tmpdir && !(tmpAt && tmpAt.mount.volume?.emptyDir && !tmpAt.mount.readOnly)) bad(`TMPDIR ${tmpdir} is not a writable emptyDir`);

  // Security context (container settings override the pod's).
  const psc = pod.securityContext || {};
  const csc = c.securityContext || {};
  const eff = (k) => (csc[k] !== undefined ? csc[k] : psc[k]);
  if (eff("runAsNonRoot") !== true) bad("runAsNonRoot is not true");
  if (!(eff("runAsUser") > 0)) bad("runAsUser is not a non-root uid");
  if (csc.readOnlyRootFilesystem !== true) bad("readOnlyRootFilesystem is not true");
  if (csc.allowPrivilegeEscalation !== false) bad("allowPrivilegeEscalation is not false");
  if (csc.privileged) bad("the container is privileged");
  if (!(csc.capabilities?.drop || []).includes("ALL") || (csc.capabilities?.add || []).length) bad("capabilities: not drop ALL, add none");
  if ((eff("seccompProfile") || {}).type !== "RuntimeDefault") bad("seccompProfile is not RuntimeDefault");
  if (pod.automountServiceAccountToken !== false) bad("the pod mounts a service account token (walshiftd needs no API access)");
  if (pod.serviceAccountName && !byKind("ServiceAccount").some((s) => s.metadata.name === pod.serviceAccountName)) {
    bad(`ServiceAccount ${pod.serviceAccountName} is not in the rendering`);
  }
  const res = c.resources || {};
  for (const k of ["cpu", "memory"]) if (!res.requests?.[k]) bad(`no ${k} request`);
  if (!res.limits?.memory) bad("no memory limit");
  const grace = pod.terminationGracePeriodSeconds ?? 30;
  if (grace < 15) bad(`terminationGracePeriodSeconds ${grace}: walshiftd needs up to 10 s to stop and 5 s for queued events`);

  // Replicas and HA.
  const replicas = spec.replicas ?? 1;
  const ha = config.ha?.enabled === true;
  if (name === "base") {
    if (replicas !== 1) bad(`${replicas} replicas: without ha one walshiftd runs a pipeline`);
    if (ha) bad("ha is enabled in the base");
    if (spec.strategy?.type !== "Recreate") bad("one walshiftd: the strategy must be Recreate (no second one during a rollout)");
  } else {
    if (replicas < 2) bad(`${replicas} replicas: HA needs two`);
    if (!ha) bad("the config does not enable ha");
    const anti = pod.affinity?.podAntiAffinity?.requiredDuringSchedulingIgnoredDuringExecution || [];
    if (!anti.some((t) => t.topologyKey === "kubernetes.io/hostname" && selects(t.labelSelector, podLabels))) {
      bad("no required pod anti-affinity on kubernetes.io/hostname for the walshiftd pods");
    }
    if (spec.strategy?.type === "Recreate") bad("strategy Recreate stops both walshiftd at once");
  }
  if (pdb) {
    const maxUn = pdb.spec.maxUnavailable ?? (pdb.spec.minAvailable !== undefined ? replicas - pdb.spec.minAvailable : replicas);
    if (maxUn < 1) bad("the PodDisruptionBudget allows no disruption: node drains would block forever");
    if (replicas > 1 && maxUn > replicas - 1) bad("the PodDisruptionBudget lets every walshiftd go at once");
  }

  const facts = {
    CONFIG_PATH: configPath,
    CONFIG_MOUNT: mountOf(configPath).mount.mountPath,
    STATUS_PORT: String(port),
    TMPDIR_PATH: tmpdir || "",
    RUN_AS_USER: String(eff("runAsUser") || ""),
    RUN_AS_GROUP: String(eff("runAsGroup") || eff("runAsUser") || ""),
    FS_GROUP: String(psc.fsGroup ?? ""),
    GRACE_SECONDS: String(grace),
    IMAGE: c.image,
    SECRET_MOUNTS: [...new Set(mounts.filter((m) => m.volume?.secret).map((m) => m.mountPath))],
    SECRET_FILES: secretFiles.map((s) => s.file),
    SECRET_ROLES: secretFiles.map((s) => s.role),
    SECRET_MODES: secretFiles.map((s) => (s.mode ?? 420).toString(8)),
  };
  return { problems, facts, config, configText };
}

const q = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;
function factsShell(facts) {
  return Object.entries(facts)
    .map(([k, v]) => (Array.isArray(v) ? `${k}=(${v.map(q).join(" ")})` : `${k}=${q(v)}`))
    .join("\n") + "\n";
}

// Breaks the base rendering in ways the checks must catch.
function selfTest(objects) {
  const cases = [
    ["a misspelt field", (o) => { dep(o).containers[0].securityContext.readOnlyRootFileSystem = true; }, /unknown field/],
    ["a wrong type", (o) => { find(o, "Deployment").spec.replicas = "1"; }, /schema/],
    ["another containerPort", (o) => { dep(o).containers[0].ports[0].containerPort += 1; }, /containerPort|status port/],
    ["a probe on /status", (o) => { dep(o).containers[0].livenessProbe.httpGet.path = "/status"; }, /livenessProbe asks/],
    ["a DSN item missing", (o) => { vol(o, "secret").items.shift(); }, /no item with path|not in a mounted Secret/],
    ["TMPDIR in the image", (o) => { dep(o).containers[0].env = [{ name: "TMPDIR", value: "/var/tmp" }]; }, /TMPDIR/],
    ["a writable root", (o) => { dep(o).containers[0].securityContext.readOnlyRootFilesystem = false; }, /readOnlyRootFilesystem/],
    ["the Service on another port", (o) => { find(o, "Service").spec.ports[0].targetPort = 8080; }, /Service port/],
    ["a token-less PodMonitor", (o) => { delete find(o, "PodMonitor").spec.podMetricsEndpoints[0].authorization; }, /no bearer token/],
  ];
  const problems = [];
  for (const [what, mutate, expect] of cases) {
    const copy = structuredClone(objects);
    mutate(copy);
    const found = check("base", copy).problems;
    if (!found.some((p) => expect.test(p))) problems.push(`self-test: ${what} was not caught (got: ${found.join("; ") || "nothing"})`);
  }
  return problems;
  function find(o, kind) { return o.find((x) => x.kind === kind); }
  function dep(o) { return find(o, "Deployment").spec.template.spec; }
  function vol(o, type) { return dep(o).volumes.find((v) => v[type])[type]; }
}

const argv = process.argv.slice(2);
let out = null;
let selfTesting = false;
const renderings = [];
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === "--out") out = argv[++i];
  else if (argv[i] === "--self-test") selfTesting = true;
  else if (/^(base|ha)=/.test(argv[i])) renderings.push([argv[i].split("=")[0], argv[i].slice(argv[i].indexOf("=") + 1)]);
  else {
    console.error(`manifests.mjs: unknown argument ${argv[i]}`);
    process.exit(2);
  }
}
if (!out || !renderings.length) {
  console.error("usage: node manifests.mjs --out DIR [--self-test] base=RENDERED.yaml [ha=RENDERED.yaml]");
  process.exit(2);
}
const problems = [];
const results = {};
for (const [name, file] of renderings) {
  let objects;
  try {
    objects = parseRendering(file);
  } catch (e) {
    console.error(`FAIL ${name}: ${e.message}`);
    process.exit(1);
  }
  const r = check(name, objects);
  results[name] = r;
  problems.push(...r.problems);
  console.log(`${name}: ${objects.length} objects (${objects.map((o) => o.kind).join(", ")})`);
  if (r.facts) {
    fs.mkdirSync(path.join(out, name), { recursive: true });
    fs.writeFileSync(path.join(out, name, "walshift.yaml"), r.configText);
    fs.writeFileSync(path.join(out, name, "facts.sh"), factsShell(r.facts));
    console.log(`${name}: status port ${r.facts.STATUS_PORT}, config ${r.facts.CONFIG_PATH}, secret files ${r.facts.SECRET_FILES.join(" ")}, TMPDIR ${r.facts.TMPDIR_PATH}`);
  }
  if (selfTesting && name === "base") problems.push(...selfTest(objects));
}
if (results.base?.config && results.ha?.config) {
  const { ha, ...rest } = results.ha.config;
  if (!same(rest, results.base.config)) problems.push("ha: its walshift.yaml differs from the base's in more than ha:");
}
if (problems.length) {
  for (const p of problems) console.error(`FAIL ${p}`);
  process.exit(1);
}
console.log(`manifests: ${renderings.map(([n]) => n).join(" and ")} agree with the schemas and with walshiftd's config${selfTesting ? "; the self-test's broken renderings were all caught" : ""}`);
