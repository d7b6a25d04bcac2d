// A SMART on FHIR app built on the SMART JavaScript client library (npm `fhirclient`, its Node
// entry point), doing a standalone launch the way a patient app does. Run with Node 22:
//
//   node smart-app.mjs ISS CLIENT_ID USER SCOPE
//
// ISS is the FHIR base URL behind Envoy. fhirclient discovers the authorization server from
// ISS/.well-known/smart-configuration (served by smartgate through Envoy), builds the authorization
// request (PKCE S256, aud=ISS), exchanges the code and calls the FHIR server with the access token.
//
// The browser is scripted here: it follows the redirects with a cookie jar and fills in the IdP's
// login form with USER (the IdP's consent completes by itself). The redirect URI is never
// contacted: the callback URL is handed to fhirclient's ready(), as the app's redirect handler would
// receive it. Prints one JSON object: the launch context, the Patient read, the Observations found.

import { createRequire } from 'node:module';

const smart = createRequire(import.meta.url)('fhirclient');

const [iss, clientId, user, scope] = process.argv.slice(2);
const REDIRECT_URI = 'http://127.0.0.1:1/callback';
const MAX_STEPS = 12;

// fhirclient keeps the launch state in a storage; one user, one launch: a Map.
const memory = new Map();
const storage = {
  get: async (key) => memory.get(key),
  set: async (key, value) => {
    memory.set(key, value);
    return value;
  },
  unset: async (key) => memory.delete(key),
};
// The Node adapter reads the current URL from the request; nothing is written to the response
// because authorize() runs with noRedirect.
const request = (url) => ({ url, headers: { host: '127.0.0.1:1' }, socket: {} });
const response = { writeHead() {}, end() {} };

// --- the user agent ---------------------------------------------------------------------
const cookies = new Map();

function remember(reply) {
  for (const line of reply.headers.getSetCookie()) {
    const [pair] = line.split(';');
    const equals = pair.indexOf('=');
    cookies.set(pair.slice(0, equals).trim(), pair.slice(equals + 1));
  }
}

async function browse(url, init = {}) {
  const cookie = [...cookies].map(([name, value]) => `${name}=${value}`).join('; ');
  const reply = await fetch(url, { ...init, redirect: 'manual', headers: { ...(init.headers ?? {}), cookie } });
  remember(reply);
  return reply;
}

async function userAgent(authorizeUrl) {
  let reply = await browse(authorizeUrl);
  let url = authorizeUrl;
  for (let step = 0; step < MAX_STEPS; step += 1) {
    if ([302, 303].includes(reply.status)) {
      url = new URL(reply.headers.get('location'), url).href;
      if (url.startsWith(REDIRECT_URI)) {
        return url;
      }
      reply = await browse(url);
    } else if (reply.status === 200 && (reply.headers.get('content-type') ?? '').startsWith('text/html')) {
      const page = await reply.text();
      const action = /<form[^>]*action="([^"]+)"/.exec(page)?.[1];
      if (!action) {
        throw new Error(`no login form at ${url}: ${page.slice(0, 300)}`);
      }
      url = new URL(action, url).href;
      reply = await browse(url, {
        method: 'POST', body: new URLSearchParams({ login: user }).toString(),
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
      });
    } else {
      throw new Error(`authorization stopped at ${reply.status} ${url}: ${(await reply.text()).slice(0, 300)}`);
    }
  }
  throw new Error('too many steps in the authorization flow');
}

// --- the app ------------------------------------------------------------------------------
const authorizeUrl = await smart(request('/launch'), response, storage).authorize({
  iss, clientId, scope, redirectUri: REDIRECT_URI, pkceMode: 'required', noRedirect: true,
});
const callback = new URL(await userAgent(authorizeUrl));
if (callback.searchParams.get('error')) {
  throw new Error(`authorization failed: ${callback.search}`);
}
const client = await smart(request(callback.pathname + callback.search), response, storage).ready();
const patient = await client.patient.read();
const observations = await client.request(`Observation?patient=${client.patient.id}&_count=100`, {
  pageLimit: 0, flat: true,
});
const discovery = await (await fetch(`${iss}/.well-known/smart-configuration`)).json();
process.stdout.write(JSON.stringify({
  authorize_url: authorizeUrl,
  authorization_endpoint: discovery.authorization_endpoint,
  token_scope: client.state.tokenResponse.scope,
  context_patient: client.patient.id,
  server_url: client.state.serverUrl,
  patient,
  observations,
}) + '\n');
