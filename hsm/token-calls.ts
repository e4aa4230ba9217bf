/** Small synchronous PKCS#11 helpers of Pkcs11Token: slot lookup, labels, key info, GCM parameters, error mapping. */
import pkcs11js from 'pkcs11js'
import { InvalidKeyArgumentError } from './errors.js'
import { mapTokenError } from './pkcs11-errors.js'
import type { LoadedModule } from './pkcs11-module.js'
import type { GcmParams, SecretKeyInfo } from './token.js'
import { asBuffer } from './token-session.js'

const { CKA_CHECK_VALUE, CKA_ID, CKA_LABEL, CKF_TOKEN_INITIALIZED, CKM_AES_GCM, CK_PARAMS_AES_GCM } = pkcs11js

type Handle = Buffer

export function findSlot (module: LoadedModule, label: string): Handle | undefined {
  const p = module.pkcs11
  for (const slot of call('C_GetSlotList', () => p.C_GetSlotList(true))) {
    const info = call('C_GetTokenInfo', () => p.C_GetTokenInfo(slot))
    if ((info.flags & CKF_TOKEN_INITIALIZED) !== 0 && stripLabel(info.label) === label) return slot
  }
  return undefined
}

/** Token labels come back padded with spaces and/or NULs. */
export function stripLabel (label: string): string {
  return label.replace(/[\0 ]+$/, '')
}

export function checkLabel (label: string): string {
  if (typeof label !== 'string' || label.length === 0 || Buffer.byteLength(label) > 32 || stripLabel(label) !== label) {
    throw new InvalidKeyArgumentError('a label is 1-32 bytes without trailing spaces')
  }
  return label
}

export function readKeyInfo (p: LoadedModule['pkcs11'], s: Handle, handle: Handle): SecretKeyInfo {
  const [label, id] = p.C_GetAttributeValue(s, handle, [{ type: CKA_LABEL }, { type: CKA_ID }])
  let checkValue = new Uint8Array(0)
  try {
    const [cv] = p.C_GetAttributeValue(s, handle, [{ type: CKA_CHECK_VALUE }])
    if (cv !== undefined) checkValue = new Uint8Array(cv.value)
  } catch {}
  return {
    handle,
    label: label?.value.toString('utf8') ?? '',
    id: new Uint8Array(id?.value ?? []),
    checkValue
  }
}

export function gcm (params: GcmParams): { mechanism: number, parameter: { type: number, iv: Buffer, aad: Buffer, ivBits: number, tagBits: number } } {
  if (params.iv.byteLength !== 12) throw new InvalidKeyArgumentError('GCM IV must be 12 bytes')
  return {
    mechanism: CKM_AES_GCM,
    parameter: { type: CK_PARAMS_AES_GCM, iv: asBuffer(params.iv), aad: asBuffer(params.aad), ivBits: 96, tagBits: 128 }
  }
}

export function pinString (pin: Uint8Array | string): string {
  return typeof pin === 'string' ? pin : Buffer.from(pin).toString('utf8')
}

/** A sync pkcs11js call with our error mapping. */
export function call<T> (operation: string, fn: () => T): T {
  try {
    return fn()
  } catch (err) {
    throw mapTokenError(operation, err)
  }
}
