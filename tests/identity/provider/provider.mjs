// The OpenID provider the identity tests start: node oidc-provider (OpenID Certified), configured
// from a JSON file a test writes (tests/identity/idpfixtures.py), listening on 127.0.0.1 only.
//
//   node provider.mjs CONFIG.json
//
// CONFIG: {"port", "issuer", "clients": [...], "jwks": {"keys": [private JWKs]}, "accounts": FILE}
// ACCOUNTS (re-read at every sign-in, so a test can change a user's groups): {"login": claims}.
// The development login form accepts any password: tests must not take it for a password check.
import { readFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const accounts = () => JSON.parse(readFileSync(config.accounts, 'utf8'));

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
  },
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email'],
    groups: ['groups'],
  },
  // Scope claims in the ID token too (the API reads the groups from it).
  conformIdTokenClaims: false,
  ttl: { IdToken: config.idTokenTtl || 3600, DeviceCode: 600, AccessToken: 3600, Grant: 3600,
         Interaction: 600, Session: 3600 },
  async findAccount(ctx, id) {
    const claims = accounts()[id];
    if (!claims) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...claims }; } };
  },
  // No consent page: every client of this test provider is trusted.
  async loadExistingGrant(ctx) {
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId,
                                               accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile email groups');
    await grant.save();
    return grant;
  },
});
provider.listen(config.port, '127.0.0.1', () => {
  console.log(`listening ${config.issuer}`);
});
